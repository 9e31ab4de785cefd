"""How an accepted event is made safe before the gateway answers 200."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from core.contract import Outbound
from gateway.fsync import Durability
from gateway.publisher import Publisher, PublishError
from gateway.relay import Relay
from gateway.spool import Spool, SpoolFull

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The event could not be made safe; the caller must not answer 200."""


class Delivery(Protocol):
    async def put(self, outbound: Outbound) -> None:
        """Return only once `outbound` is safe; raise `Unavailable` otherwise."""

    def status(self) -> dict[str, Any]:
        """Readiness and whatever explains it, for `/readyz`."""


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


class SpooledDelivery:
    """Safe means durable in the local spool (`ack: spooled`); the relay publishes it later."""

    def __init__(
        self,
        spool: Spool,
        durability: Durability,
        relay: Relay,
        publisher: Publisher,
        stall_after_s: float,
    ) -> None:
        self._spool, self._durability = spool, durability
        self._relay, self._publisher = relay, publisher
        self._stall_after_s = stall_after_s
        self.alarm = Alarm()
        self.stopping = False

    async def put(self, outbound: Outbound) -> None:
        try:
            record = self._spool.append(outbound)
            self._relay.submit(record)
            await self._durability.durable()
        except SpoolFull as exc:
            self.alarm.raise_(str(exc))
            raise Unavailable("spool full") from exc
        except OSError as exc:
            self.alarm.raise_(f"disk error: {exc.strerror or exc}")
            raise Unavailable("spool disk error") from exc
        self.alarm.clear()

    def status(self) -> dict[str, Any]:
        broker = self._publisher.ready
        # Connected but confirming nothing: blocked by a resource alarm, or stuck.
        stalled = self._relay.stalled_s > self._stall_after_s
        return {
            "ready": broker and not stalled and self.alarm.reason is None and not self.stopping,
            "broker_connected": broker,
            "relay_stalled": stalled,
            "stopping": self.stopping,
            "spool_problem": self.alarm.reason,
            "spool": self._spool.stats(),
            "relay_pending": self._relay.pending,
            "relay_spilled": self._relay.spilled,
        }


class ConfirmedDelivery:
    """Safe means confirmed by RabbitMQ (`ack: confirmed`), or spooled if that takes too long."""

    def __init__(
        self, publisher: Publisher, fallback: SpooledDelivery, confirm_timeout_s: float
    ) -> None:
        self._publisher, self._fallback = publisher, fallback
        self._confirm_timeout_s = confirm_timeout_s

    async def put(self, outbound: Outbound) -> None:
        if self._publisher.ready:
            try:
                await self._publisher.publish(outbound, self._confirm_timeout_s)
                return
            except PublishError:
                # A late confirm may still come: the spooled copy then makes a
                # duplicate with the same event id, never a loss.
                pass
        await self._fallback.put(outbound)

    def status(self) -> dict[str, Any]:
        return self._fallback.status()
