"""The presence ledger on its own: counting, idempotency and order independence in SQLite,
and opening it from many processes at once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal

import orjson
import pytest

from consumers import ledger, testing
from consumers.handler import Reject
from consumers.ledger import LedgerDB, LedgerError
from core.contract import Event
from core.settings import LedgerSettings
from tests.support.processes import child_environ

ROOT = Path(__file__).resolve().parent.parent
STORE = 42
OPENERS, ROUNDS = 6, 100
# One child process: for each line read (the go signal), open the next new database.
OPENER = """
import sys
from pathlib import Path
from consumers.ledger import LedgerDB
from core.settings import LedgerSettings
folder, rounds = Path(sys.argv[1]), int(sys.argv[2])
for n in range(rounds):
    sys.stdin.readline()
    try:
        LedgerDB.open(LedgerSettings(db=folder / f"{n}.sqlite3")).close()
    except Exception as exc:
        print(f"round {n}: {type(exc).__name__}: {exc}", flush=True)
    else:
        print("ok", flush=True)
"""


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


def test_times_before_year_1000_keep_a_fixed_width() -> None:
    early, late = ledger.instant("0999-12-31T23:59:59Z"), ledger.instant("1000-01-01T00:00:00Z")
    assert early == "0999-12-31T23:59:59.000000Z"
    assert late is not None
    assert early < late


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


@contextlib.contextmanager
def openers(folder: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """`OPENERS` child processes running `OPENER`, each in its own process group."""
    children: list[subprocess.Popen[str]] = []
    try:
        for _ in range(OPENERS):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-c", OPENER, str(folder), str(ROUNDS)],
                    cwd=ROOT,
                    env=child_environ(),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        yield children
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    stream.close()


def go(children: list[subprocess.Popen[str]]) -> list[str]:
    """Let every child open its next database at the same moment; what each said."""
    inputs: list[IO[str]] = [child.stdin for child in children if child.stdin is not None]
    for stream in inputs:
        stream.write("\n")
    for stream in inputs:
        stream.flush()
    return [child.stdout.readline().strip() for child in children if child.stdout is not None]


def test_workers_opening_a_new_ledger_at_the_same_moment_all_succeed(tmp_path: Path) -> None:
    """Each round `OPENERS` processes open the same new file together, as the built-in
    workers do when started at once; before openers retried the switch to WAL, some
    died with "database is locked"."""
    with openers(tmp_path) as children:
        said = [line for _ in range(ROUNDS) for line in go(children)]
    assert [line for line in said if line != "ok"] == []
    assert len(said) == ROUNDS * OPENERS
    for n in range(ROUNDS):
        with contextlib.closing(sqlite3.connect(tmp_path / f"{n}.sqlite3")) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert tables >= {"processed", "visits", "tracking"}


@contextlib.contextmanager
def locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding `path` in an exclusive transaction until it commits."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        yield holder


async def test_opening_waits_while_another_connection_holds_the_ledger_locked(
    tmp_path: Path,
) -> None:
    settings = LedgerSettings(db=tmp_path / "ledger.sqlite3", busy_timeout_ms=20)
    failures: list[str] = []
    with locked(settings.db) as holder:

        async def retry(exc: sqlite3.OperationalError, attempt: int) -> None:
            failures.append(f"{attempt}: {exc}")
            if attempt == 2:
                holder.execute("COMMIT")

        async with ledger.opened(settings, retry) as presence:
            assert await presence.apply([event("entered")]) == 1
    assert failures == [f"{n}: database is locked" for n in range(3)]


async def test_without_retry_a_locked_ledger_fails_at_once(tmp_path: Path) -> None:
    settings = LedgerSettings(db=tmp_path / "ledger.sqlite3", busy_timeout_ms=20)
    with locked(settings.db), pytest.raises(LedgerError, match="database is locked"):
        async with ledger.opened(settings):
            pass


def corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not a database" * 300)
    return path


def under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / "ledger.sqlite3"


@pytest.mark.parametrize(
    ("where", "complaint"),
    [(corrupt, "file is not a database"), (under_a_file, "File exists")],
)
async def test_a_ledger_that_cannot_be_opened_fails_without_waiting(
    tmp_path: Path, where: Any, complaint: str
) -> None:
    path = where(tmp_path)

    async def retry(exc: sqlite3.OperationalError, attempt: int) -> None:
        raise AssertionError(f"waited for a permanent failure: {exc}")

    expected = f"{re.escape(f'cannot open the ledger at {path}: ')}.*{complaint}"
    with pytest.raises(LedgerError, match=expected):
        async with ledger.opened(LedgerSettings(db=path), retry):
            pass
