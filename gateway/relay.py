"""The relay: publishes spooled records to RabbitMQ, pipelined, and marks what was confirmed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Final

from core.aio import stop_task
from gateway.backlog import Backlog
from gateway.publisher import Outcomes, Publisher, PublishError, Unencodable
from gateway.spool import Record, Spool

log = logging.getLogger(__name__)

FAILURE_PAUSE_S: Final = 0.5


class Relay:
    """Records arrive by `submit` and wait in a `Backlog` (memory first, disk beyond);
    they are published while the relay is entered (`async with relay`)."""

    def __init__(
        self, spool: Spool, publisher: Publisher, max_in_flight: int, memory_max_bytes: int
    ) -> None:
        self._spool = spool
        self._publisher = publisher
        self._backlog = Backlog(spool, memory_max_bytes)
        self._wakeup = asyncio.Event()
        self._settled = asyncio.Event()
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._stopped = False
        self._running: asyncio.Task[None] | None = None
        self._pause_until = 0.0
        self._progress_at = time.monotonic()
        self.publish_attempts = 0
        self.confirmed = 0

    def submit(self, record: Record) -> None:
        self._progressed_if_idle()
        self._backlog.add(record)
        self._wakeup.set()

    def submit_all(self, records: Iterable[Record]) -> None:
        self._progressed_if_idle()
        for record in records:
            self._backlog.add(record)
        self._wakeup.set()

    @property
    def spilled(self) -> int:
        """Records waiting on disk only, beyond the memory bound."""
        return self._backlog.spilled

    @property
    def pending(self) -> int:
        return len(self._backlog) + self._in_flight

    @property
    def stalled_s(self) -> float:
        """How long work has waited without a single confirm: a blocked or stuck broker."""
        if not self.pending:
            return 0.0
        return time.monotonic() - self._progress_at

    def _progressed_if_idle(self) -> None:
        # An idle relay has made all the progress it can: the clock starts with new work.
        if not self.pending:
            self._progress_at = time.monotonic()

    async def __aenter__(self) -> Relay:
        """Dispatch until the exit; records are settled as the broker's confirms come."""
        self._running = asyncio.create_task(self._dispatch(), name="relay")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop dispatching; unconfirmed records stay in the spool for the next start."""
        self._stopped = True
        task, self._running = self._running, None
        await stop_task(task)

    async def _dispatch(self) -> None:
        while True:
            batch = await self._next_batch()
            self.publish_attempts += len(batch)
            try:
                await self._publisher.write([(r.outbound, r) for r in batch], self._settle)
            except PublishError as exc:
                log.debug("relay publish failed", extra={"error": str(exc)})
                self._in_flight -= len(batch)
                for record in reversed(batch):
                    self._failed(record)

    async def _next_batch(self) -> list[Record]:
        """As many records as there is room in flight for: one write carries them all."""
        while True:
            await self._publisher.wait_ready()
            # Checked after every wakeup: a record put back after a failure waits too.
            pause_s = self._pause_until - asyncio.get_running_loop().time()
            if pause_s > 0:
                await asyncio.sleep(pause_s)
                continue
            if batch := self._take(self._max_in_flight - self._in_flight):
                return batch
            self._wakeup.clear()
            await self._wakeup.wait()

    def _take(self, room: int) -> list[Record]:
        batch: list[Record] = []
        while len(batch) < room and (record := self._backlog.take()) is not None:
            batch.append(record)
        # Counted in flight at once, so `pending` never misses a record being written.
        self._in_flight += len(batch)
        return batch

    def _settle(self, outcomes: Outcomes[Record]) -> None:
        """What one confirm frame of the broker said of the records it covers."""
        self._in_flight -= len(outcomes)
        if self._stopped:
            return
        confirmed = [record for record, error in outcomes if error is None]
        if confirmed:
            self._confirmed(confirmed)
        if len(confirmed) < len(outcomes):
            # Put back last first, so that they stay in order in front of the line.
            for record, error in reversed(outcomes):
                if error is not None:
                    self._unconfirmed(record, error)
        # Settled records free room in flight: the dispatcher may go on.
        self._wakeup.set()
        self._settled.set()

    def _unconfirmed(self, record: Record, error: PublishError) -> None:
        if isinstance(error, Unencodable):
            self._set_aside(record, str(error))
        else:
            log.debug("relay publish failed", extra={"error": str(error)})
            self._failed(record)

    def _confirmed(self, records: list[Record]) -> None:
        self._progress_at = time.monotonic()
        self.confirmed += len(records)
        confirm = self._spool.confirm
        for record in records:
            confirm(record.seq)
        # At once, not on a timer: what a killed gateway replays is then only what was in
        # flight, not every confirm since the last checkpoint (a pwrite, about 2 us).
        self._spool.save_watermark()

    def _set_aside(self, record: Record, reason: str) -> None:
        """Keep a record AMQP cannot carry on disk for an operator, so it blocks nothing."""
        try:
            path = self._spool.set_aside(record)
        except OSError as exc:
            # Not kept aside, so not confirmed either: it stays in line and in the spool.
            log.error("setting an event aside failed", extra={"error": str(exc)})
            self._failed(record)
            return
        log.error(
            "event cannot be published; set aside",
            extra={"event_id": record.outbound.message_id, "path": str(path), "reason": reason},
        )
        self._confirmed([record])

    def _failed(self, record: Record) -> None:
        """Put the record back in front and pause, so a refusing broker is not hammered."""
        self._backlog.put_back(record)
        self._wakeup.set()
        self._pause_until = asyncio.get_running_loop().time() + FAILURE_PAUSE_S

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything submitted is confirmed, at most `timeout_s`; True if it was."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.pending:
                    self._settled.clear()
                    await self._settled.wait()
        return not self.pending
