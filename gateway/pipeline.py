"""The publish pipeline: the spool, the publisher and the relay, owned as one async resource.

`async with Pipeline(settings) as pipeline` recovers the spool, connects to the broker
and relays what an earlier run left unconfirmed. `pipeline.accept(outbound)` is the only
way in: it returns once the event is safe as `ack` says. On the way out the relay
publishes what it can within `http.shutdown_timeout_s`; then the relay stops, the
connection closes and the spool closes, in the reverse order of their start. What was
not confirmed stays spooled for the next start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass

from core.contract import Outbound
from core.settings import Settings
from gateway.publisher import Publisher, PublishError
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


class Pipeline:
    """Everything between a handler and the broker."""

    def __init__(self, settings: Settings) -> None:
        s = settings.spool
        self.spool = Spool(s.dir, s.segment_bytes, s.max_bytes, s.fsync, s.fsync_interval_ms / 1000)
        self.publisher = Publisher(settings.amqp)
        self.relay = Relay(self.spool, self.publisher, s.max_in_flight, s.memory_max_bytes)
        # `ack: confirmed`: how long a request waits for the broker before it is spooled.
        self._confirm_timeout_s = (
            settings.confirm_timeout_ms / 1000 if settings.ack == "confirmed" else None
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

        `ack: spooled`: durable in the spool, published later by the relay.
        `ack: confirmed`: confirmed by the broker within `confirm_timeout_ms`, else spooled.
        """
        if self._open is None:
            raise Unavailable("the pipeline is not open")
        timeout_s = self._confirm_timeout_s
        if timeout_s is not None and await self._confirmed(outbound, timeout_s):
            return
        await self._spooled(outbound)

    async def _confirmed(self, outbound: Outbound, timeout_s: float) -> bool:
        if not self.publisher.ready:
            return False
        try:
            await self.publisher.publish(outbound, timeout_s)
        except PublishError:
            # A late confirm may still come: the spooled copy then makes a duplicate
            # with the same event id, never a loss.
            return False
        return True

    async def _spooled(self, outbound: Outbound) -> None:
        try:
            self.relay.submit(self.spool.append(outbound))
            await self.spool.durable()
        except SpoolFull as exc:
            self._alarm.raise_(str(exc))
            raise Unavailable("spool full") from exc
        except OSError as exc:
            self._alarm.raise_(f"disk error: {exc.strerror or exc}")
            raise Unavailable("spool disk error") from exc
        self._alarm.clear()

    def status(self) -> Status:
        connected = self.publisher.ready
        # Connected but confirming nothing: blocked by a resource alarm, or stuck.
        stalled = self.relay.stalled_s > self._stall_after_s
        problem = self._alarm.reason
        return Status(
            ready=connected and not stalled and problem is None and not self._stopping,
            broker_connected=connected,
            relay_stalled=stalled,
            stopping=self._stopping,
            spool_problem=problem,
            spool=self.spool.stats(),
            relay_pending=self.relay.pending,
            relay_spilled=self.relay.spilled,
            publishes=self.relay.attempts,
            confirms=self.relay.published,
            returns=self.publisher.returns,
            reconnects=self.publisher.reconnects,
        )
