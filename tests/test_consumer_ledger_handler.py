"""The presence ledger as the built-in workers' handler."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers import testing
from consumers.handler import Reject
from consumers.ledger_handler import handlers
from core.contract import Event
from core.settings import LedgerSettings
from ledger.ledger import opened as open_ledger

STORE = 42


def entered(session: str) -> Event:
    return Event.from_body(testing.transition("entered", STORE, session).body)


async def test_one_and_many_apply_to_the_ledger(tmp_path: Path) -> None:
    async with open_ledger(LedgerSettings(db=tmp_path / "ledger.sqlite3")) as ledger:
        handler = handlers(ledger)
        assert handler.many is not None
        await handler.many([entered("s1"), entered("s2")])
        await handler.one(entered("s3"))
        [store] = await ledger.occupancy(STORE)
    assert store["occupancy"] == 3


async def test_an_event_the_ledger_cannot_apply_is_rejected(tmp_path: Path) -> None:
    # Rejected: dead-lettered at once with the ledger's reason, never retried.
    async with open_ledger(LedgerSettings(db=tmp_path / "ledger.sqlite3")) as ledger:
        good = entered("s1")
        data = {k: v for k, v in good.data.items() if k != "sessionId"}
        bad = Event(good.id, good.type, good.source, good.time, good.subject, data)
        handler = handlers(ledger)
        assert handler.many is not None
        with pytest.raises(Reject, match="no sessionId"):
            await handler.many([bad, entered("s2")])
        assert await ledger.occupancy() == []
