"""The relay: publishes spooled records to RabbitMQ, pipelined, and marks what was confirmed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Final

from gateway.backlog import Backlog
from gateway.publisher import Publisher, PublishError, Unencodable
from gateway.spool import Record, Spool

log = logging.getLogger(__name__)

FAILURE_PAUSE_S: Final = 0.5
CHECKPOINT_S: Final = 0.2


class Relay:
    """Records arrive by `submit` and wait in a `Backlog` (memory first, disk beyond)."""

    def __init__(
        self, spool: Spool, publisher: Publisher, max_in_flight: int, memory_max_bytes: int
    ) -> None:
        self._spool = spool
        self._publisher = publisher
        self._backlog = Backlog(spool, memory_max_bytes)
        self._wakeup = asyncio.Event()
        self._settled = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pause_until = 0.0
        self._progress_at = time.monotonic()
        self.attempts = 0
        self.published = 0
        self.failures = 0

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
        return len(self._backlog) + len(self._in_flight)

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

    async def run(self) -> None:
        """Dispatch forever; the confirm of each record is awaited by a task of its own."""
        try:
            await asyncio.gather(self._dispatch(), self._checkpoint())
        finally:
            # Unconfirmed records stay in the spool and go out again at the next start.
            for task in self._in_flight:
                task.cancel()

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            record = await self._next()
            # Added before the task first runs; it takes itself out when it settles.
            self._in_flight.add(asyncio.create_task(self._publish(record)))

    async def _next(self) -> Record:
        await self._publisher.wait_ready()
        pause_s = self._pause_until - asyncio.get_running_loop().time()
        if pause_s > 0:
            await asyncio.sleep(pause_s)
        while (record := self._backlog.take()) is None:
            self._wakeup.clear()
            await self._wakeup.wait()
        return record

    async def _publish(self, record: Record) -> None:
        confirmed = False
        self.attempts += 1
        try:
            await self._publisher.send(record.outbound)
            confirmed = True
        except Unencodable as exc:
            self._set_aside(record, str(exc))
            confirmed = True
        except PublishError as exc:
            log.debug("relay publish failed", extra={"error": str(exc)})
        finally:
            # Whatever ended the attempt, an unconfirmed record goes back in line.
            if confirmed:
                self._progress_at = time.monotonic()
                self.published += 1
                self._spool.confirm(record.seq)
            else:
                self._failed(record)
            self._in_flight.discard(asyncio.current_task())
            self._slots.release()
            self._settled.set()

    def _set_aside(self, record: Record, reason: str) -> None:
        """Keep a record AMQP cannot carry on disk for an operator, so it blocks nothing."""
        path = self._spool.set_aside(record)
        log.error(
            "event cannot be published; set aside",
            extra={"event_id": record.outbound.message_id, "path": str(path), "reason": reason},
        )

    def _failed(self, record: Record) -> None:
        """Put the record back in front and pause, so a refusing broker is not hammered."""
        self.failures += 1
        self._backlog.put_back(record)
        self._wakeup.set()
        self._pause_until = asyncio.get_running_loop().time() + FAILURE_PAUSE_S

    async def _checkpoint(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_S)
            self._spool.save_watermark()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything submitted is confirmed, at most `timeout_s`; True if it was."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.pending:
                    self._settled.clear()
                    await self._settled.wait()
        return not self.pending
