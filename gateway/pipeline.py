"""The publish pipeline: the spool, the publisher and the relay, owned as one async resource.

`async with Pipeline(settings) as pipeline` recovers the spool, connects to the broker
and relays what an earlier run left unconfirmed. `pipeline.accept(outbound)` is the only
way in: it returns once the event is safe as `gateway.ack` says. On the way out the relay
publishes what it can within `http.shutdown_timeout_s`; then the relay stops, the
connection closes and the spool closes, in the reverse order of their start. What was
not confirmed stays spooled for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass

from core.contract import Outbound
from core.settings import GatewayProcessSettings
from core.tracing import Tracer
from gateway.publisher import Outcomes, Publisher, PublishError
from gateway.relay import Relay
from gateway.spool import Spool, SpoolFull, SpoolStats

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The event could not be made safe; the caller must not answer 200."""


@dataclass(frozen=True, slots=True)
class Status:
    """The pipeline at one moment: what `/readyz` answers and `/metrics` samples."""

    ready: bool
    broker_connected: bool
    relay_stalled: bool
    stopping: bool
    spool_problem: str | None
    spool: SpoolStats
    relay_pending: int
    relay_spilled: int
    # Named as the metrics they feed (`aifi_relay_publishes`, `aifi_relay_confirms`), and as
    # /readyz has always answered them: publish attempts, and publishes confirmed.
    publishes: int
    confirms: int
    returns: int
    reconnects: int


class Alarm:
    """A failing condition logged when it starts and when it ends, not on every request."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def raise_(self, reason: str) -> None:
        if self.reason is None:
            log.error("spool cannot accept events; answering 503", extra={"reason": reason})
        self.reason = reason

    def clear(self) -> None:
        if self.reason is not None:
            log.warning("spool accepts events again", extra={"was": self.reason})
        self.reason = None


Waiter = asyncio.Future[None]


class Coalescer:
    """`gateway.ack: confirmed`: the messages of the requests of one loop turn leave in one write,
    and each request learns of its own message's confirm, or that there was none within
    `timeout_s` (one timer per write, not per request)."""

    def __init__(self, publisher: Publisher, timeout_s: float) -> None:
        self._publisher = publisher
        self._timeout_s = timeout_s
        self._waiting: list[tuple[Outbound, Waiter]] = []
        self._writes: set[asyncio.Task[None]] = set()

    async def publish(self, outbound: Outbound) -> None:
        """Return once the broker confirmed `outbound`; else raise `PublishError`."""
        loop = asyncio.get_running_loop()
        waiter: Waiter = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._write_waiting)
        self._waiting.append((outbound, waiter))
        await waiter

    def _write_waiting(self) -> None:
        batch, self._waiting = self._waiting, []
        waiters = [waiter for _, waiter in batch]
        asyncio.get_running_loop().call_later(self._timeout_s, _expire, waiters)
        task = asyncio.create_task(self._write(batch))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, batch: list[tuple[Outbound, Waiter]]) -> None:
        try:
            if not self._publisher.ready:
                # Not written late: its requests would be answered from the spool by then.
                raise PublishError("not connected")
            await self._publisher.write(batch, _settle)
        except PublishError as exc:
            _settle([(waiter, exc) for _, waiter in batch])

    async def close(self) -> None:
        """Stop the writes still under way: their requests have long gone to the spool."""
        for task in self._writes:
            task.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)


def _settle(outcomes: Outcomes[Waiter]) -> None:
    for waiter, error in outcomes:
        if not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


def _expire(waiters: list[Waiter]) -> None:
    # A late confirm may still come: the spooled copy then makes a duplicate with the
    # same event id, never a loss.
    _settle([(waiter, PublishError("no confirm in time")) for waiter in waiters])


class Pipeline:
    """Everything between a handler and the broker."""

    def __init__(self, settings: GatewayProcessSettings, tracer: Tracer | None = None) -> None:
        s = settings.spool
        self.spool = Spool(s.dir, s.segment_bytes, s.max_bytes, s.fsync, s.fsync_interval_ms / 1000)
        self.publisher = Publisher(settings.amqp, settings.consumers, tracer)
        self.relay = Relay(self.spool, self.publisher, s.max_in_flight, s.memory_max_bytes)
        # `gateway.ack: confirmed`: how long a request waits for the broker before it is spooled.
        self._coalescer = (
            Coalescer(self.publisher, settings.gateway.confirm_timeout_ms / 1000)
            if settings.gateway.ack == "confirmed"
            else None
        )
        self._stall_after_s = settings.amqp.publish_timeout_s
        self._drain_timeout_s = settings.http.shutdown_timeout_s
        self._alarm = Alarm()
        self._stopping = False
        self._open: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> Pipeline:
        async with contextlib.AsyncExitStack() as stack:
            recovered = self.spool.recover()
            stack.callback(self.spool.close)
            await stack.enter_async_context(self.publisher)
            if self._coalescer is not None:
                stack.push_async_callback(self._coalescer.close)
            await stack.enter_async_context(self.relay)
            stack.push_async_callback(self._drain)
            self._open = stack.pop_all()
        if recovered:
            log.warning("republishing spooled events", extra={"count": len(recovered)})
        self.relay.submit_all(recovered)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop_being_ready()
        if self._open is not None:
            try:
                await self._open.aclose()
            finally:
                self._open = None

    async def _drain(self) -> None:
        drained = await self.relay.drain(self._drain_timeout_s)
        stats = dataclasses.asdict(self.spool.stats())
        log.info("relay stopped", extra={"drained": drained, **stats})

    def stop_being_ready(self) -> None:
        """Say not ready from now on (shutdown began); events are still accepted."""
        self._stopping = True

    async def accept(self, outbound: Outbound) -> None:
        """Return once `outbound` is safe; raise `Unavailable` if it cannot be made so.

        `gateway.ack: spooled`: durable in the spool, published later by the relay.
        `gateway.ack: confirmed`: confirmed by the broker within
        `gateway.confirm_timeout_ms`, else spooled.
        """
        if self._open is None:
            raise Unavailable("the pipeline is not open")
        coalescer = self._coalescer
        if coalescer is not None and await self._confirmed(coalescer, outbound):
            return
        await self._spooled(outbound)

    async def _confirmed(self, coalescer: Coalescer, outbound: Outbound) -> bool:
        # Behind a backlog (a broker late to confirm, blocked say), straight to the spool:
        # a direct publish would also time out, be spooled and, once the broker goes on,
        # arrive twice; the duplicates of a blocked broker stay those of one timeout.
        if not self.publisher.ready or self.relay.pending:
            return False
        try:
            await coalescer.publish(outbound)
        except PublishError:
            return False
        return True

    async def _spooled(self, outbound: Outbound) -> None:
        try:
            record = self.spool.append(outbound)
            await self.spool.durable()
        except SpoolFull as exc:
            self._alarm.raise_(str(exc))
            raise Unavailable("spool full") from exc
        except OSError as exc:
            self._alarm.raise_(f"disk error: {exc.strerror or exc}")
            raise Unavailable("spool disk error") from exc
        # Handed to the relay only once safe: an event answered 503 is never published
        # (its retry would be a second event, with an id of its own).
        self.relay.submit(record)
        self._alarm.clear()

    def status(self) -> Status:
        connected = self.publisher.ready
        # Connected but confirming nothing: blocked by a resource alarm, or stuck.
        stalled = self.relay.stalled_s > self._stall_after_s
        problem = self.spool.poisoned or self._alarm.reason
        return Status(
            ready=connected and not stalled and problem is None and not self._stopping,
            broker_connected=connected,
            relay_stalled=stalled,
            stopping=self._stopping,
            spool_problem=problem,
            spool=self.spool.stats(),
            relay_pending=self.relay.pending,
            relay_spilled=self.relay.spilled,
            publishes=self.relay.publish_attempts,
            confirms=self.relay.confirmed,
            returns=self.publisher.returns,
            reconnects=self.publisher.reconnects,
        )
