"""The presence ledger on its own, on both backends (SQLite and PostgreSQL): counting,
idempotency, order independence, concurrent writers against the reference model, pruning,
schema versions; and, for SQLite, opening one file from many processes at once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import orjson
import psycopg
import pytest
from psycopg import errors as pg_errors

from consumers import testing
from consumers.ledger_handler import handlers
from core.contract import Event
from core.settings import LedgerSettings
from devtools import pgnode
from ledger import postgres
from ledger.effects import instant
from ledger.errors import (
    BadEvent,
    LedgerError,
    LedgerMissing,
    LedgerUnavailable,
    SchemaTooNew,
    SchemaTooOld,
)
from ledger.ledger import Ledger, opened as open_ledger
from ledger.schema import SCHEMA_VERSION
from ledger.sqlite import LedgerDB
from tests.support import ledger_reference as reference, ledger_schema as schema
from tests.support.processes import child_environ
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
STORE = 42
OPENERS, ROUNDS = 6, 100
# One child process: for each line read (the go signal), open the next new database.
OPENER = """
import sys
from pathlib import Path
from ledger.sqlite import LedgerDB
from core.settings import LedgerSettings
from devtools import pgnode
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
    """The SQLite ledger's own connection, for what only SQLite has (locks, WAL, files)."""
    opened = LedgerDB.open(LedgerSettings(db=tmp_path / "data" / "ledger.sqlite3"))
    yield opened
    opened.close()


@pytest.fixture
async def ledger(ledger_settings: LedgerSettings) -> AsyncIterator[Ledger]:
    """A new ledger on each backend."""
    async with open_ledger(ledger_settings) as opened:
        yield opened


async def test_twins_count_as_two_exits(ledger: Ledger) -> None:
    left_twice = [event("exited"), event("exited")]
    assert left_twice[0].data["fingerprint"] == left_twice[1].data["fingerprint"]
    await ledger.apply([event("entered"), event("entered"), *left_twice])
    visit = await ledger.visit("s1")
    assert visit is not None
    assert (visit["personsEntered"], visit["personsExited"], visit["occupancy"]) == (2, 2, 0)


async def test_a_redelivered_event_counts_once(
    ledger: Ledger, ledger_settings: LedgerSettings
) -> None:
    entered = event("entered")
    assert await ledger.apply([entered, entered]) == 1
    assert await ledger.apply([entered]) == 0
    assert await schema.processed(ledger_settings) == 1
    assert await ledger.occupancy() == [
        {"storeId": STORE, "occupancy": 1, "openSessions": 1, "sessions": 1}
    ]


def group_visit(session: str) -> list[Event]:
    """A group of two: two entries, two twin exits, one of them delivered twice."""
    events = [
        event("entered", session, timeOfOrigin="2024-05-01T10:00:00Z"),
        event("entered", session, timeOfOrigin="2024-05-01T10:00:00.250Z", shopperId="p-2"),
        event("exited", session, timeOfOrigin="2024-05-01T10:30:00.5Z"),
        event("exited", session, timeOfOrigin="2024-05-01T10:30:00Z"),
    ]
    return [*events, events[2]]


async def test_every_order_of_a_visit_ends_in_the_same_state(ledger: Ledger) -> None:
    """Each order of the same five deliveries, one by one, on a session of its own."""
    outcomes = set()
    for n, order in enumerate(itertools.permutations(range(5))):
        events = group_visit(f"order-{n}")
        for index in order:
            await ledger.apply([events[index]])
        visit = await ledger.visit(f"order-{n}")
        assert visit is not None
        # The greatest non-null ("p-2" < "p-order-..."), whatever came first.
        assert visit["shopperId"] == f"p-order-{n}"
        outcomes.add(orjson.dumps(visit | dict.fromkeys(("sessionId", "shopperId", "customerId"))))
    assert len(outcomes) == 1
    visit = orjson.loads(outcomes.pop())
    assert visit["firstEntered"] == "2024-05-01T10:00:00.000000Z"
    assert visit["lastExited"] == "2024-05-01T10:30:00.500000Z"
    assert (visit["personsEntered"], visit["personsExited"]) == (2, 2)


async def test_an_exit_before_its_entry_never_makes_occupancy_negative(ledger: Ledger) -> None:
    await ledger.apply([event("exited", "s1"), event("exited", "s1"), event("entered", "s2")])
    assert await ledger.occupancy(STORE) == [
        {"storeId": STORE, "occupancy": 1, "openSessions": 1, "sessions": 2}
    ]
    await ledger.apply([event("entered", "s1")])
    visit = await ledger.visit("s1")
    assert visit is not None
    assert visit["occupancy"] == 0
    assert (await ledger.occupancy())[0]["occupancy"] == 1


async def test_tracking_is_one_row_per_unique_event_id(ledger: Ledger) -> None:
    matched, unmatched = tracking("u-1", "p-9"), tracking("u-2")
    assert await ledger.apply([matched, matched, unmatched]) == 2
    # The same call again: the same event id.
    assert await ledger.apply([tracking("u-1", "p-9")]) == 0
    row, other = await ledger.tracking("u-1"), await ledger.tracking("u-2")
    assert row is not None
    assert other is not None
    assert (row["shopperId"], row["matched"], row["storeId"]) == ("p-9", True, STORE)
    assert row["timeOfOrigin"] == "2024-05-01T12:00:00.000000Z"
    assert (other["shopperId"], other["matched"]) == (None, False)
    assert await ledger.tracking("u-3") is None


async def test_a_batch_is_all_or_nothing(ledger: Ledger, ledger_settings: LedgerSettings) -> None:
    good, bad = event("entered", "s1"), without(event("entered", "s2"), "sessionId")
    with pytest.raises(BadEvent, match="no sessionId"):
        await ledger.apply([good, bad])
    assert await schema.processed(ledger_settings) == 0
    assert await ledger.visit("s1") is None
    assert await ledger.apply([good]) == 1


async def test_a_time_that_is_not_iso_is_rejected(ledger: Ledger) -> None:
    broken = event("entered")
    broken.data["timeOfOrigin"] = "yesterday"
    with pytest.raises(BadEvent, match="not an ISO time"):
        await ledger.apply([broken])


def mixed_stream(count: int) -> list[Event]:
    """Entries, twin exits (some before their entries), tracking matches, and redeliveries,
    over a few stores, some sessions with fields that differ from event to event."""
    rng = random.Random(count)
    events: list[Event] = []
    matches: set[tuple[int, str]] = set()
    for n in range(count):
        session, store = f"m{n % (count // 4 or 1)}", 100 + n % 3
        kind = rng.choice(["entered", "exited", "exited", "tracking"])
        at = f"2024-05-01T10:{n % 60:02d}:00Z"
        if kind == "tracking":
            # One call per (store, uniqueEventId), the event id's key: a match seen by two
            # stores is two events on one row.
            match, shopper = f"u{n % 11}", rng.choice([None, f"p{n % 7}"])
            if (store, match) in matches:
                continue
            matches.add((store, match))
            body = testing.tracking(store, match, shopper).body
        elif kind == "entered":
            body = testing.transition("entered", store, session, timeOfOrigin=at).body
        else:
            body = testing.transition("exited", store, session, timeOfOrigin=at).body
        events.append(Event.from_body(body))
    return events + rng.sample(events, count // 5)  # redeliveries: the same event ids


async def test_the_ledger_equals_the_reference_model_of_a_mixed_stream(
    ledger: Ledger, ledger_settings: LedgerSettings
) -> None:
    events = mixed_stream(400)
    rng = random.Random(7)
    shuffled = rng.sample(events, len(events))
    for start in range(0, len(shuffled), 37):
        await ledger.apply(shuffled[start : start + 37])
    assert await reference.differences(ledger_settings, events) == []


async def test_concurrent_writers_of_overlapping_batches_equal_the_reference_model(
    ledger_settings: LedgerSettings,
) -> None:
    """Four ledgers (four connections, as four workers have) apply batches at once that
    share sessions and event ids, in different orders: nothing lost, nothing counted twice,
    no deadlock left unresolved."""
    events = mixed_stream(800)
    async with contextlib.AsyncExitStack() as stack:
        writers = [await stack.enter_async_context(open_ledger(ledger_settings)) for _ in range(4)]

        async def write(writer: Ledger, seed: int) -> None:
            order = random.Random(seed).sample(events, len(events))
            for start in range(0, len(order), 64):
                await writer.apply(order[start : start + 64])

        await asyncio.gather(*(write(w, n) for n, w in enumerate(writers)))
        assert await reference.differences(ledger_settings, events) == []


def test_times_compare_as_times_not_as_text() -> None:
    # As raw text "…22Z" sorts after "…22.5Z"; normalized, the later time sorts later.
    earlier = instant("2024-05-01T10:00:22Z")
    later = instant("2024-05-01T10:00:22.5Z")
    assert earlier is not None
    assert later is not None
    assert earlier < later
    assert instant("2024-05-01T12:00:00+02:00") == "2024-05-01T10:00:00.000000Z"


def test_times_before_year_1000_keep_a_fixed_width() -> None:
    early, late = instant("0999-12-31T23:59:59Z"), instant("1000-01-01T00:00:00Z")
    assert early == "0999-12-31T23:59:59.000000Z"
    assert late is not None
    assert early < late


async def test_the_sqlite_ledger_runs_off_the_event_loop(tmp_path: Path) -> None:
    settings = LedgerSettings(db=tmp_path / "ledger.sqlite3")
    async with open_ledger(settings) as ledger:
        handler = handlers(ledger)
        assert handler.many is not None
        await handler.many([event("entered"), event("exited")])
        await handler.one(event("entered", "s2"))
        assert await schema.processed(settings) == 3
    reopened = LedgerDB.open(settings)
    assert reopened.occupancy()[0]["occupancy"] == 1
    reopened.close()


async def test_pruning_forgets_only_ids_applied_before_the_cutoff(
    ledger: Ledger, ledger_settings: LedgerSettings
) -> None:
    old, recent = event("entered", "old"), event("entered", "recent")
    await ledger.apply([old])
    await asyncio.sleep(0.01)
    cutoff = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await ledger.apply([recent])
    retention_s = (datetime.now(UTC) - cutoff).total_seconds()
    assert await ledger.prune(retention_s) == 1
    assert await schema.processed(ledger_settings) == 1
    assert await ledger.apply([recent]) == 0, "a recent redelivery is still recognised"
    assert await ledger.apply([old]) == 1, "past the retention an id is forgotten"
    assert await ledger.prune(86_400) == 0


async def test_the_opened_ledger_prunes_in_the_background(ledger_settings: LedgerSettings) -> None:
    settings = ledger_settings.model_copy(
        update={"processed_retention_days": 1e-9, "prune_interval_s": 0.01}
    )
    async with open_ledger(settings) as ledger:
        assert await ledger.apply([event("entered")]) == 1
        await eventually(lambda: _none_processed(settings), 5, "the processed id to be pruned")


async def _none_processed(settings: LedgerSettings) -> bool:
    return await schema.processed(settings) == 0


async def test_a_retention_of_zero_keeps_every_id(ledger_settings: LedgerSettings) -> None:
    settings = ledger_settings.model_copy(
        update={"processed_retention_days": 0, "prune_interval_s": 0.01}
    )
    async with open_ledger(settings) as ledger:
        await ledger.apply([event("entered")])
        await asyncio.sleep(0.1)
        assert await schema.processed(settings) == 1


async def test_ping_answers_while_the_database_does(ledger: Ledger) -> None:
    assert await answers(ledger)


async def test_ping_fails_while_postgresql_is_down_and_answers_once_it_is_back(
    private_pg: pgnode.PgNode,
) -> None:
    async with open_ledger(LedgerSettings(url=private_pg.url)) as ledger:
        assert await answers(ledger)
        await asyncio.to_thread(private_pg.stop, "immediate")
        with pytest.raises(LedgerUnavailable):
            await ledger.ping()
        await asyncio.to_thread(private_pg.start)
        await eventually(lambda: answers(ledger), 30, "the ledger to answer again")


async def answers(ledger: Ledger) -> bool:
    try:
        await ledger.ping()
    except LedgerUnavailable:
        return False
    return True


async def test_a_reader_does_not_create_a_ledger(ledger_settings: LedgerSettings) -> None:
    with pytest.raises(LedgerMissing):
        async with open_ledger(ledger_settings, create=False):
            pass
    async with open_ledger(ledger_settings):
        pass
    async with open_ledger(ledger_settings, create=False) as reader:
        assert await reader.occupancy() == []


async def test_a_new_ledger_is_at_this_releases_schema_version(
    ledger_settings: LedgerSettings,
) -> None:
    async with open_ledger(ledger_settings):
        pass
    assert await schema.version(ledger_settings) == SCHEMA_VERSION


async def test_a_ledger_from_before_the_version_table_is_migrated_and_keeps_its_rows(
    ledger_settings: LedgerSettings,
) -> None:
    """Version 1: the layout of the releases before the version table, with a visit."""
    await schema.create_version_1(ledger_settings, session="kept", store=STORE)
    async with open_ledger(ledger_settings) as ledger:
        assert await ledger.apply([event("entered", "kept")]) == 1
        visit = await ledger.visit("kept")
        assert visit is not None
        assert visit["personsEntered"] == 2
        assert await schema.processed(ledger_settings) == 2
    assert await schema.version(ledger_settings) == SCHEMA_VERSION


async def test_a_reader_leaves_an_older_schema_to_the_workers(
    ledger_settings: LedgerSettings,
) -> None:
    """The presence API and `aifi-ledger` write nothing, a migration included."""
    await schema.create_version_1(ledger_settings, session="kept", store=STORE)
    with pytest.raises(SchemaTooOld, match="schema version 1"):
        async with open_ledger(ledger_settings, create=False):
            pass
    assert await schema.version(ledger_settings) == 1


async def test_a_reader_of_an_empty_sqlite_file_writes_nothing(tmp_path: Path) -> None:
    # What a worker leaves for an instant before its schema commits.
    settings = LedgerSettings(db=tmp_path / "ledger.sqlite3")
    settings.db.touch()
    with pytest.raises(LedgerMissing):
        async with open_ledger(settings, create=False):
            pass
    assert settings.db.stat().st_size == 0


async def test_a_ledger_of_a_newer_schema_is_refused_at_once(
    ledger_settings: LedgerSettings,
) -> None:
    async with open_ledger(ledger_settings):
        pass
    await schema.set_version(ledger_settings, SCHEMA_VERSION + 1)

    async def retry(exc: Exception, attempt: int) -> None:
        raise AssertionError(f"waited for a permanent failure: {exc}")

    newer = f"schema version {SCHEMA_VERSION + 1}, newer than this release's {SCHEMA_VERSION}"
    with pytest.raises(SchemaTooNew, match=re.escape(newer)):
        async with open_ledger(ledger_settings, retry):
            pass


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

        async def retry(exc: Exception, attempt: int) -> None:
            failures.append(f"{attempt}: {exc}")
            if attempt == 2:
                holder.execute("COMMIT")

        async with open_ledger(settings, retry) as ledger:
            assert await ledger.apply([event("entered")]) == 1
    assert failures == [f"{n}: database is locked" for n in range(3)]


async def test_without_retry_a_locked_ledger_fails_at_once(tmp_path: Path) -> None:
    settings = LedgerSettings(db=tmp_path / "ledger.sqlite3", busy_timeout_ms=20)
    with locked(settings.db), pytest.raises(LedgerError, match="database is locked"):
        async with open_ledger(settings):
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

    async def retry(exc: Exception, attempt: int) -> None:
        raise AssertionError(f"waited for a permanent failure: {exc}")

    expected = f"{re.escape(f'cannot open the ledger at {path}: ')}.*{complaint}"
    with pytest.raises(LedgerError, match=expected):
        async with open_ledger(LedgerSettings(db=path), retry):
            pass


@pytest.mark.parametrize(
    ("error", "passes"),
    [
        pytest.param(pg_errors.AdminShutdown("restarting"), True, id="57-shutdown"),
        pytest.param(pg_errors.ConnectionFailure("gone"), True, id="08-connection"),
        pytest.param(pg_errors.LockNotAvailable("locked"), True, id="55-lock"),
        pytest.param(pg_errors.InsufficientPrivilege("no"), False, id="42-refused"),
        pytest.param(psycopg.OperationalError("connection refused"), True, id="no-sqlstate"),
        pytest.param(
            psycopg.OperationalError('FATAL:  password authentication failed for user "aifi"'),
            False,
            id="fatal",
        ),
        pytest.param(
            psycopg.OperationalError("FATAL:  the database system is starting up"),
            True,
            id="fatal-starting",
        ),
        pytest.param(ConnectionResetError(), True, id="os-error"),
        pytest.param(ValueError("bug"), False, id="other"),
    ],
)
def test_postgresql_errors_that_pass_are_retried_and_refusals_are_not(
    error: BaseException, passes: bool
) -> None:
    assert postgres.passing(error) is passes
