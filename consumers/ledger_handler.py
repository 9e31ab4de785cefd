"""The presence ledger as the built-in workers' handler: a batch applied in one transaction
and acked after its commit; an event the ledger cannot apply dead-lettered."""

from __future__ import annotations

from collections.abc import Sequence

from consumers.handler import Handlers, Reject
from core.contract import Event
from ledger.errors import BadEvent
from ledger.ledger import Ledger


def handlers(ledger: Ledger) -> Handlers:
    """`ledger`'s handlers; `many` is all or nothing, as `Handlers` asks."""

    async def one(event: Event) -> None:
        await many([event])

    async def many(events: Sequence[Event]) -> None:
        try:
            await ledger.apply(events)
        except BadEvent as exc:
            raise Reject(str(exc)) from exc

    return Handlers(one=one, many=many)
