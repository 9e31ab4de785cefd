"""What the relay has yet to publish: in memory up to a bound, beyond it on disk only.

In the normal path every record is in memory and the spool is only written.
When the broker falls behind (or is away) for longer than the bound covers, new
records are left on disk ("spilled") and read back, oldest first, once the
records in memory are gone: memory stays bounded however long the outage.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from gateway.spool import Record, Spool

RECORD_OVERHEAD_BYTES: Final = 600  # the Outbound, its headers dict and the deque slot


def footprint(record: Record) -> int:
    return len(record.outbound.body) + RECORD_OVERHEAD_BYTES


class Backlog:
    def __init__(self, spool: Spool, memory_max_bytes: int) -> None:
        self._spool = spool
        self._memory_max_bytes = memory_max_bytes
        self._records: deque[Record] = deque()
        self._bytes = 0
        self._spilled_from: int | None = None  # first seq that is only on disk
        # The last seq added: the spool holds records after it that are not yet safe (and
        # may never be), which a read back must leave alone.
        self._last_seq = 0

    def __len__(self) -> int:
        return len(self._records) + self.spilled

    @property
    def spilled(self) -> int:
        if self._spilled_from is None:
            return 0
        return self._last_seq - self._spilled_from + 1

    def add(self, record: Record) -> None:
        self._last_seq = record.seq
        if self._spilled_from is None and self._bytes < self._memory_max_bytes:
            self._keep(record)
        elif self._spilled_from is None:
            self._spilled_from = record.seq

    def put_back(self, record: Record) -> None:
        """A record whose publish failed goes first in line again, whatever the bound."""
        self._records.appendleft(record)
        self._bytes += footprint(record)

    def take(self) -> Record | None:
        if not self._records and self._spilled_from is not None:
            self._read_back(self._spilled_from)
        if not self._records:
            return None
        record = self._records.popleft()
        self._bytes -= footprint(record)
        return record

    def _keep(self, record: Record) -> None:
        self._records.append(record)
        self._bytes += footprint(record)

    def _read_back(self, first_seq: int) -> None:
        """Load spilled records, oldest first, up to half the bound."""
        for record in self._spool.read_from(first_seq, self._memory_max_bytes // 2):
            if record.seq > self._last_seq:
                break
            self._keep(record)
        last = self._records[-1].seq if self._records else first_seq - 1
        self._spilled_from = last + 1 if last < self._last_seq else None
