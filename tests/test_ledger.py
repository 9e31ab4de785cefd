"""The presence ledger on its own: counting, idempotency and order independence in SQLite."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest

from consumers import ledger, testing
from consumers.handler import Reject
from consumers.ledger import LedgerDB
from gateway.contract import Event
from gateway.settings import LedgerSettings

STORE = 42


def event(kind: Literal["entered", "exited"], session: str = "s1", **fields: Any) -> Event:
    """An event exactly as the gateway would publish it."""
    return Event.from_body(testing.transition(kind, STORE, session, **fields).body)


def tracking(unique_event_id: str, shopper_id: str | None = None) -> Event:
    return Event.from_body(testing.tracking(STORE, unique_event_id, shopper_id).body)


def without(event: Event, field: str) -> Event:
    data = {k: v for k, v in event.data.items() if k != field}
    return Event(event.id, event.type, event.source, event.time, event.subject, data)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[LedgerDB]:
    opened = LedgerDB.open(LedgerSettings(db=tmp_path / "data" / "ledger.sqlite3"))
    yield opened
    opened.close()


def state(db: LedgerDB, *sessions: str) -> Any:
    return [db.visit(s) for s in sessions], db.occupancy()


def test_twins_count_as_two_exits(db: LedgerDB) -> None:
    left_twice = [event("exited"), event("exited")]
    assert left_twice[0].data["fingerprint"] == left_twice[1].data["fingerprint"]
    db.apply([event("entered"), event("entered"), *left_twice])
    visit = db.visit("s1")
    assert visit is not None
    assert (visit["personsEntered"], visit["personsExited"], visit["occupancy"]) == (2, 2, 0)


def test_a_redelivered_event_counts_once(db: LedgerDB) -> None:
    entered = event("entered")
    assert db.apply([entered, entered]) == 1
    assert db.apply([entered]) == 0
    assert db.processed() == 1
    assert db.occupancy() == [{"storeId": STORE, "occupancy": 1, "openSessions": 1, "sessions": 1}]


def test_every_order_of_a_visit_ends_in_the_same_state(tmp_path: Path) -> None:
    """A group of two: two entries, two twin exits, one of them delivered twice."""
    events = [
        event("entered", timeOfOrigin="2024-05-01T10:00:00Z"),
        event("entered", timeOfOrigin="2024-05-01T10:00:00.250Z", shopperId="p-2"),
        event("exited", timeOfOrigin="2024-05-01T10:30:00.5Z"),
        event("exited", timeOfOrigin="2024-05-01T10:30:00Z"),
    ]
    events.append(events[2])
    outcomes = set()
    for n, order in enumerate(itertools.permutations(events)):
        db = LedgerDB.open(LedgerSettings(db=tmp_path / f"{n}.sqlite3"))
        for single in order:
            db.apply([single])
        outcomes.add(orjson.dumps(state(db, "s1")))
        db.close()
    assert len(outcomes) == 1
    [visit], _ = orjson.loads(outcomes.pop())
    assert visit["firstEntered"] == "2024-05-01T10:00:00.000000Z"
    assert visit["lastExited"] == "2024-05-01T10:30:00.500000Z"
    assert (visit["personsEntered"], visit["personsExited"]) == (2, 2)
    assert visit["shopperId"] == "p-s1"  # the greatest non-null, whatever came first


def test_an_exit_before_its_entry_never_makes_occupancy_negative(db: LedgerDB) -> None:
    db.apply([event("exited", "s1"), event("exited", "s1"), event("entered", "s2")])
    assert db.occupancy(STORE) == [
        {"storeId": STORE, "occupancy": 1, "openSessions": 1, "sessions": 2}
    ]
    db.apply([event("entered", "s1")])
    visit = db.visit("s1")
    assert visit is not None
    assert visit["occupancy"] == 0
    assert db.occupancy()[0]["occupancy"] == 1


def test_tracking_is_one_row_per_unique_event_id(db: LedgerDB) -> None:
    matched, unmatched = tracking("u-1", "p-9"), tracking("u-2")
    assert db.apply([matched, matched, unmatched]) == 2
    assert db.apply([tracking("u-1", "p-9")]) == 0  # the same call again: the same event id
    row, other = db.tracking("u-1"), db.tracking("u-2")
    assert row is not None
    assert other is not None
    assert (row["shopperId"], row["matched"], row["storeId"]) == ("p-9", True, STORE)
    assert row["timeOfOrigin"] == "2024-05-01T12:00:00.000000Z"
    assert (other["shopperId"], other["matched"]) == (None, False)
    assert db.tracking("u-3") is None


def test_a_batch_is_all_or_nothing(db: LedgerDB) -> None:
    good, bad = event("entered", "s1"), without(event("entered", "s2"), "sessionId")
    with pytest.raises(Reject, match="no sessionId"):
        db.apply([good, bad])
    assert db.processed() == 0
    assert db.visit("s1") is None
    assert db.apply([good]) == 1


def test_a_time_that_is_not_iso_is_rejected(db: LedgerDB) -> None:
    broken = event("entered")
    broken.data["timeOfOrigin"] = "yesterday"
    with pytest.raises(Reject, match="not an ISO time"):
        db.apply([broken])


def test_times_compare_as_times_not_as_text() -> None:
    # As raw text "…22Z" sorts after "…22.5Z"; normalized, the later time sorts later.
    earlier = ledger.instant("2024-05-01T10:00:22Z")
    later = ledger.instant("2024-05-01T10:00:22.5Z")
    assert earlier is not None
    assert later is not None
    assert earlier < later
    assert ledger.instant("2024-05-01T12:00:00+02:00") == "2024-05-01T10:00:00.000000Z"


async def test_the_async_ledger_runs_off_the_event_loop(tmp_path: Path) -> None:
    settings = LedgerSettings(db=tmp_path / "ledger.sqlite3")
    async with ledger.opened(settings) as presence:
        handler = presence.handler()
        assert handler.many is not None
        await handler.many([event("entered"), event("exited")])
        await handler.one(event("entered", "s2"))
        assert await presence.call(LedgerDB.processed) == 3
    reopened = LedgerDB.open(settings)
    assert reopened.occupancy()[0]["occupancy"] == 1
    reopened.close()


def test_pruning_forgets_only_ids_applied_before_the_cutoff(db: LedgerDB) -> None:
    old, recent = event("entered", "old"), event("entered", "recent")
    db.apply([old])
    cutoff = datetime.now(UTC)
    db.apply([recent])
    assert db.prune(cutoff) == 1
    assert db.processed() == 1
    assert db.apply([recent]) == 0, "a recent redelivery is still recognised"
    assert db.apply([old]) == 1, "past the retention an id is forgotten"
    assert db.prune(cutoff - timedelta(days=1)) == 0


async def test_the_opened_ledger_prunes_in_the_background(tmp_path: Path) -> None:
    settings = LedgerSettings(
        db=tmp_path / "ledger.sqlite3", processed_retention_days=1e-9, prune_interval_s=0.01
    )
    async with ledger.opened(settings) as presence:
        assert await presence.apply([event("entered")]) == 1
        for _ in range(500):  # up to 5 s
            if not await presence.call(LedgerDB.processed):
                break
            await asyncio.sleep(0.01)
        assert await presence.call(LedgerDB.processed) == 0


async def test_a_retention_of_zero_keeps_every_id(tmp_path: Path) -> None:
    settings = LedgerSettings(
        db=tmp_path / "ledger.sqlite3", processed_retention_days=0, prune_interval_s=0.01
    )
    async with ledger.opened(settings) as presence:
        await presence.apply([event("entered")])
        await asyncio.sleep(0.1)
        assert await presence.call(LedgerDB.processed) == 1
