"""How an accepted event is made safe before the gateway answers 200."""

from __future__ import annotations

from typing import Any, Protocol

from gateway.contract import Outbound
from gateway.publisher import Publisher, PublishError


class Unavailable(Exception):
    """The event could not be made safe; the caller must not answer 200."""


class Delivery(Protocol):
    async def put(self, outbound: Outbound) -> None:
        """Return only once `outbound` is safe; raise `Unavailable` otherwise."""

    def status(self) -> dict[str, Any]:
        """Readiness and whatever explains it, for `/readyz`."""


class ConfirmedDelivery:
    """Safe means confirmed by RabbitMQ: each request awaits its own publisher confirm."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def put(self, outbound: Outbound) -> None:
        try:
            await self._publisher.publish(outbound)
        except PublishError as exc:
            raise Unavailable(f"broker did not confirm ({exc})") from exc

    def status(self) -> dict[str, Any]:
        return {"ready": self._publisher.ready, "broker_connected": self._publisher.ready}
