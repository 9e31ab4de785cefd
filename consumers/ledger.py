"""The presence ledger: one row per visit (session) and per tracking match, in SQLite.

Each event is applied in the transaction that records its id as processed, so an effect
and its "done" mark commit together and a redelivered event has its effect once. Every
effect commutes (counters add; times keep the earliest or latest; other fields keep the
greatest value that is not null), so every order of the same events ends in the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from consumers.handler import Handlers, Reject
from core.contract import Event, Kind
from core.settings import LedgerSettings
from core.times import utc

Row = dict[str, Any]

log = logging.getLogger(__name__)

# Statements one by one: `executescript` would commit the transaction they run in.
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS processed (
    event_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    processed_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS processed_by_time ON processed (processed_at);
CREATE TABLE IF NOT EXISTS visits (
    session_id TEXT PRIMARY KEY,
    store_id INTEGER,
    oasis_store_id INTEGER,
    aifi_unique_store_id TEXT,
    store_external_id TEXT,
    customer_id TEXT,
    customer_role TEXT,
    shopper_id TEXT,
    group_size INTEGER,
    first_entered TEXT,
    last_exited TEXT,
    persons_entered INTEGER NOT NULL,
    persons_exited INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS visits_by_store ON visits (store_id);
CREATE TABLE IF NOT EXISTS tracking (
    unique_event_id TEXT PRIMARY KEY,
    store_id INTEGER,
    shopper_id TEXT,
    time_of_origin TEXT,
    time_of_issue TEXT,
    received_at TEXT
) WITHOUT ROWID;
"""

# Facts about a visit that every event of its session repeats; merged by keeping the greatest.
VISIT_FACTS: Final = (
    "store_id",
    "oasis_store_id",
    "aifi_unique_store_id",
    "store_external_id",
    "customer_id",
    "customer_role",
    "shopper_id",
    "group_size",
)
VISIT_FIELDS: Final = (
    "session_id",
    *VISIT_FACTS,
    "first_entered",
    "last_exited",
    "persons_entered",
    "persons_exited",
)
TRACKING_TIMES: Final = ("time_of_origin", "time_of_issue", "received_at")
TRACKING_FIELDS: Final = ("unique_event_id", "store_id", "shopper_id", *TRACKING_TIMES)
# Plain INSERT: `_unseen` filtered the batch under the write lock, so a conflict is a bug
# that must fail the transaction, not an event to count twice.
MARK_PROCESSED: Final = "INSERT INTO processed VALUES (?, ?, ?)"
PRUNE: Final = "DELETE FROM processed WHERE processed_at < ?"
SEEN: Final = "SELECT event_id FROM processed WHERE event_id IN (SELECT value FROM json_each(?))"

# Another connection holds a lock it will let go of. PROTOCOL: a WAL locking race that
# SQLite's own retries did not settle.
PASSING: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_PROTOCOL})
WAL_RETRY_MAX_S: Final = 0.05

# Awaited after an attempt to open failed on a passing lock; returns when to try again.
Retry = Callable[[sqlite3.OperationalError, int], Awaitable[None]]


class LedgerError(Exception):
    """The ledger could not be opened, and nobody waits for it to become possible."""


def passing(exc: sqlite3.Error) -> bool:
    """True if `exc` is a lock that another connection holds for a while (busy, locked)."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in PASSING


def use_wal(db: sqlite3.Connection, patience_s: float) -> None:
    """Switch `db` to WAL, trying again for up to `patience_s` while it is locked.

    The switch takes an exclusive lock, and SQLite returns "database is locked" without
    calling the busy handler where waiting could deadlock (two openers holding a shared
    lock, each wanting the exclusive one), so busy_timeout alone cannot cover openers that
    start together. It cannot run in a transaction either: hence the loop.
    """
    deadline = time.monotonic() + patience_s
    attempt = 0
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not passing(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(min(WAL_RETRY_MAX_S, 0.001 * 2**attempt))
        attempt += 1


def _merge(table: str, column: str, pick: str) -> str:
    """`column` set to min or max of old and new, ignoring null (SQL's min/max do not)."""
    old, new = f"{table}.{column}", f"excluded.{column}"
    return f"{column} = coalesce({pick}({old}, {new}), {old}, {new})"


def _upsert(table: str, fields: Sequence[str], merges: Sequence[str]) -> str:
    names, values = ", ".join(fields), ", ".join(f":{f}" for f in fields)
    return (
        f"INSERT INTO {table} ({names}) VALUES ({values}) "
        f"ON CONFLICT ({fields[0]}) DO UPDATE SET {', '.join(merges)}"
    )


UPSERT_VISIT: Final = _upsert(
    "visits",
    VISIT_FIELDS,
    [
        *(_merge("visits", f, "max") for f in VISIT_FACTS),
        _merge("visits", "first_entered", "min"),
        _merge("visits", "last_exited", "max"),
        "persons_entered = visits.persons_entered + excluded.persons_entered",
        "persons_exited = visits.persons_exited + excluded.persons_exited",
    ],
)
UPSERT_TRACKING: Final = _upsert(
    "tracking",
    TRACKING_FIELDS,
    [
        *(_merge("tracking", f, "max") for f in ("store_id", "shopper_id")),
        *(_merge("tracking", f, "min") for f in TRACKING_TIMES),
    ],
)


def instant(value: object) -> str | None:
    """A time as fixed-width UTC text, so that comparing the text compares the times."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise Reject(f"not an ISO time: {value!r}") from exc
    aware = utc(moment)
    # %Y is not zero-padded below year 1000 on glibc, which would break the text order.
    return f"{aware.year:04d}" + aware.strftime("-%m-%dT%H:%M:%S.%fZ")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def visit_row(event: Event) -> Row:
    """One person entering or leaving: the twin "left" calls of a group are two rows' worth."""
    data = event.data
    if not data.get("sessionId"):
        raise Reject(f"{event.kind} event {event.id} has no sessionId")
    entered = event.kind == "entered"
    at = instant(data.get("timeOfOrigin"))
    return {
        "session_id": str(data["sessionId"]),
        "store_id": data.get("storeId"),
        "oasis_store_id": data.get("oasisApiStoreId"),
        "aifi_unique_store_id": data.get("aifiUniqueStoreId"),
        "store_external_id": _text(data.get("storeExternalId")),
        "customer_id": _text(data.get("customerId")),
        "customer_role": data.get("customerRole"),
        "shopper_id": _text(data.get("shopperId")),
        "group_size": data.get("groupSize"),
        "first_entered": at if entered else None,
        "last_exited": None if entered else at,
        "persons_entered": int(entered),
        "persons_exited": int(not entered),
    }


def tracking_row(event: Event) -> Row:
    data = event.data
    if not data.get("uniqueEventId"):
        raise Reject(f"tracking event {event.id} has no uniqueEventId")
    return {
        "unique_event_id": str(data["uniqueEventId"]),
        "store_id": data.get("storeId"),
        "shopper_id": _text(data.get("shopperId")),
        "time_of_origin": instant(data.get("timeOfOrigin")),
        "time_of_issue": instant(data.get("timeOfIssue")),
        "received_at": instant(data.get("receivedAt")),
    }


class Effect:
    """What one event does to the ledger: a row and the upsert that applies it."""

    __slots__ = ("event", "row", "upsert")

    def __init__(self, event: Event, build: Callable[[Event], Row], upsert: str) -> None:
        self.event = event
        self.row = build(event)
        self.upsert = upsert


EFFECTS: Final[dict[Kind, tuple[Callable[[Event], Row], str]]] = {
    "entered": (visit_row, UPSERT_VISIT),
    "exited": (visit_row, UPSERT_VISIT),
    "tracking": (tracking_row, UPSERT_TRACKING),
}
UPSERTS: Final = (UPSERT_VISIT, UPSERT_TRACKING)


class LedgerDB:
    """The ledger's SQLite database; use it from one thread (`Ledger` sees to that)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @classmethod
    def open(cls, settings: LedgerSettings) -> LedgerDB:
        """Open the database, creating it if missing; any number may open it at once.

        Raises `sqlite3.OperationalError` if it stays locked beyond `busy_timeout_ms`
        (see `passing`), `sqlite3.Error` or `OSError` for what waiting will not mend.
        """
        settings.db.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not the module's.
        db = sqlite3.connect(settings.db, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {settings.busy_timeout_ms:d}")
            use_wal(db, settings.busy_timeout_ms / 1000)
            db.execute(f"PRAGMA synchronous = {settings.synchronous}")
            ledger = cls(db)
            ledger.create_schema()
        except BaseException:
            db.close()
            raise
        return ledger

    def create_schema(self) -> None:
        """Create what is missing in one write transaction, so concurrent creators take turns."""
        with self._transaction():
            for statement in filter(str.strip, SCHEMA.split(";")):
                self._db.execute(statement)

    def close(self) -> None:
        self._db.close()

    def apply(self, events: Sequence[Event]) -> int:
        """Apply `events` in one transaction; return how many were new (not redeliveries)."""
        # Every row is built before anything is written: a bad event fails the batch early.
        effects = [Effect(event, *EFFECTS[event.kind]) for event in events]
        now = datetime.now(UTC).isoformat()
        with self._transaction():
            fresh = self._unseen(effects)
            self._db.executemany(MARK_PROCESSED, [(e.event.id, e.event.kind, now) for e in fresh])
            for upsert in UPSERTS:
                self._db.executemany(upsert, [e.row for e in fresh if e.upsert == upsert])
        return len(fresh)

    def _unseen(self, effects: Sequence[Effect]) -> list[Effect]:
        """The effects of events neither processed before nor repeated earlier in the batch."""
        ids = orjson.dumps([effect.event.id for effect in effects]).decode()
        seen = {row[0] for row in self._db.execute(SEEN, (ids,))}
        fresh = []
        for effect in effects:
            if effect.event.id not in seen:
                seen.add(effect.event.id)
                fresh.append(effect)
        return fresh

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so that two workers sharing the file wait
        # for each other (busy_timeout) instead of failing on a lock upgrade.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def occupancy(self, store_id: int | None = None) -> list[Row]:
        """Per store: people inside (never below 0 per session), open and all sessions."""
        where, args = ("WHERE store_id = ?", (store_id,)) if store_id is not None else ("", ())
        return self._rows(
            "SELECT store_id AS storeId,"
            " sum(max(persons_entered - persons_exited, 0)) AS occupancy,"
            " sum(persons_entered > persons_exited) AS openSessions, count(*) AS sessions"
            f" FROM visits {where} GROUP BY store_id ORDER BY store_id",
            args,
        )

    def visit(self, session_id: str) -> Row | None:
        rows = self._rows(
            "SELECT session_id AS sessionId, store_id AS storeId, oasis_store_id AS"
            " oasisApiStoreId, aifi_unique_store_id AS aifiUniqueStoreId, store_external_id AS"
            " storeExternalId, customer_id AS customerId, customer_role AS customerRole,"
            " shopper_id AS shopperId, group_size AS groupSize, first_entered AS firstEntered,"
            " last_exited AS lastExited, persons_entered AS personsEntered, persons_exited AS"
            " personsExited, max(persons_entered - persons_exited, 0) AS occupancy"
            " FROM visits WHERE session_id = ?",
            (session_id,),
        )
        return rows[0] if rows else None

    def tracking(self, unique_event_id: str) -> Row | None:
        rows = self._rows(
            "SELECT unique_event_id AS uniqueEventId, store_id AS storeId, shopper_id AS"
            " shopperId, time_of_origin AS timeOfOrigin, time_of_issue AS timeOfIssue,"
            " received_at AS receivedAt FROM tracking WHERE unique_event_id = ?",
            (unique_event_id,),
        )
        return rows[0] | {"matched": rows[0]["shopperId"] is not None} if rows else None

    def prune(self, before: datetime) -> int:
        """Forget the ids of events applied before `before`; return how many were forgotten.

        A redelivery of such an event would count again: the retention must outlast
        any redelivery (retries, a replay of dead letters) by far.
        """
        with self._transaction():
            cursor = self._db.execute(PRUNE, (before.astimezone(UTC).isoformat(),))
        return cursor.rowcount

    def processed(self) -> int:
        """How many distinct events the ledger has applied."""
        return int(self._db.execute("SELECT count(*) FROM processed").fetchone()[0])

    def _rows(self, sql: str, args: Sequence[object]) -> list[Row]:
        return [dict(row) for row in self._db.execute(sql, args)]


class Ledger:
    """A `LedgerDB` owned by one thread, so that SQLite never blocks the event loop."""

    def __init__(self, db: LedgerDB, executor: ThreadPoolExecutor) -> None:
        self._db = db
        self._executor = executor

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run `function(db, *args)` on the ledger's thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, function, self._db, *args
        )

    async def apply(self, events: Sequence[Event]) -> int:
        return int(await self.call(LedgerDB.apply, list(events)))

    async def apply_one(self, event: Event) -> None:
        await self.apply([event])

    async def apply_many(self, events: Sequence[Event]) -> None:
        await self.apply(events)

    async def prune(self, retention_s: float) -> int:
        before = datetime.now(UTC) - timedelta(seconds=retention_s)
        return int(await self.call(LedgerDB.prune, before))

    async def keep_pruned(self, retention_s: float, interval_s: float) -> None:
        """Prune every `interval_s` for as long as the task lives."""
        while True:
            try:
                removed = await self.prune(retention_s)
            except sqlite3.Error as exc:
                # Busy or failing: nothing is lost by trying again next time.
                log.warning("pruning processed event ids failed", extra={"error": str(exc)})
            else:
                if removed:
                    log.info("forgot processed event ids", extra={"count": removed})
            await asyncio.sleep(interval_s)

    def handler(self) -> Handlers:
        """The built-in workers' handler: batches in one transaction, acked after the commit."""
        return Handlers(one=self.apply_one, many=self.apply_many)


@contextlib.asynccontextmanager
async def opened(settings: LedgerSettings, retry: Retry | None = None) -> AsyncIterator[Ledger]:
    """The ledger at `settings.db`, created if missing, closed on exit.

    While another connection holds it locked, `retry(error, attempt)` is awaited before
    each new attempt; without `retry`, or for any other failure, `LedgerError` is raised.
    """
    # One thread for the connection's whole life: work queued on it runs in order, even
    # work whose awaiting task was cancelled.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
    loop = asyncio.get_running_loop()
    try:
        db = await _open(executor, settings, retry)
        try:
            async with pruning(Ledger(db, executor), settings) as opened_ledger:
                yield opened_ledger
        finally:
            await loop.run_in_executor(executor, db.close)
    finally:
        executor.shutdown(wait=False)


async def _open(
    executor: ThreadPoolExecutor, settings: LedgerSettings, retry: Retry | None
) -> LedgerDB:
    loop, attempt = asyncio.get_running_loop(), 0
    while True:
        try:
            return await loop.run_in_executor(executor, LedgerDB.open, settings)
        except (sqlite3.Error, OSError) as exc:
            if retry is None or not isinstance(exc, sqlite3.OperationalError) or not passing(exc):
                raise LedgerError(f"cannot open the ledger at {settings.db}: {exc}") from exc
            await retry(exc, attempt)
        attempt += 1


@contextlib.asynccontextmanager
async def pruning(presence: Ledger, settings: LedgerSettings) -> AsyncIterator[Ledger]:
    """`presence`, pruned in the background while the block runs, unless retention is 0."""
    if not settings.processed_retention_days:
        yield presence
        return
    retention_s = settings.processed_retention_days * 86_400
    task = asyncio.create_task(presence.keep_pruned(retention_s, settings.prune_interval_s))
    try:
        yield presence
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
