"""The ledger in one SQLite file: the embedded default, shared by the workers of one machine.

`LedgerDB` is the connection, used from one thread; `SqliteStore` runs it on a thread of
its own, so that SQLite never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

import orjson

from core.settings import LedgerSettings
from ledger import schema
from ledger.effects import (
    TRACKING_FIELDS,
    TRACKING_MERGE,
    VISIT_FIELDS,
    VISIT_MERGE,
    Batch,
    Row,
    tracking_answer,
)
from ledger.errors import LedgerMissing, LedgerUnavailable

T = TypeVar("T")

# Each step takes the schema from the version before it to its own; statements one by one,
# as `executescript` would commit the transaction they run in.
VERSION_1: Final = """
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
) WITHOUT ROWID
"""
DIALECT: Final = schema.Dialect(
    has_table="SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
    placeholder="?",
    migrations={
        1: tuple(filter(str.strip, VERSION_1.split(";"))),
        2: ("CREATE TABLE schema_version (version INTEGER NOT NULL)",),
    },
)

# Plain INSERT: `_unseen` filtered the batch under the write lock, so a conflict is a bug
# that must fail the transaction, not an event to count twice.
MARK_PROCESSED: Final = "INSERT INTO processed VALUES (?, ?, ?)"
PRUNE: Final = "DELETE FROM processed WHERE processed_at < ?"
SEEN: Final = "SELECT event_id FROM processed WHERE event_id IN (SELECT value FROM json_each(?))"

# Another connection holds a lock it will let go of. PROTOCOL: a WAL locking race that
# SQLite's own retries did not settle.
PASSING: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_PROTOCOL})
WAL_RETRY_MAX_S: Final = 0.05


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


def _merge(table: str, column: str, how: str) -> str:
    """`column` merged with the stored value; min/max ignore null (SQLite's scalar ones do not)."""
    old, new = f"{table}.{column}", f"excluded.{column}"
    if how == "sum":
        return f"{column} = {old} + {new}"
    return f"{column} = coalesce({how}({old}, {new}), {old}, {new})"


def _upsert(table: str, fields: Sequence[str], merge: dict[str, str]) -> str:
    names, values = ", ".join(fields), ", ".join(f":{f}" for f in fields)
    sets = ", ".join(_merge(table, column, how) for column, how in merge.items())
    return (
        f"INSERT INTO {table} ({names}) VALUES ({values}) "
        f"ON CONFLICT ({fields[0]}) DO UPDATE SET {sets}"
    )


UPSERT_VISIT: Final = _upsert("visits", VISIT_FIELDS, VISIT_MERGE)
UPSERT_TRACKING: Final = _upsert("tracking", TRACKING_FIELDS, TRACKING_MERGE)
OCCUPANCY: Final = (
    "SELECT store_id AS storeId,"
    " sum(max(persons_entered - persons_exited, 0)) AS occupancy,"
    " sum(persons_entered > persons_exited) AS openSessions, count(*) AS sessions"
    " FROM visits {where} GROUP BY store_id ORDER BY store_id"
)
VISIT: Final = (
    "SELECT session_id AS sessionId, store_id AS storeId, oasis_store_id AS"
    " oasisApiStoreId, aifi_unique_store_id AS aifiUniqueStoreId, store_external_id AS"
    " storeExternalId, customer_id AS customerId, customer_role AS customerRole,"
    " shopper_id AS shopperId, group_size AS groupSize, first_entered AS firstEntered,"
    " last_exited AS lastExited, persons_entered AS personsEntered, persons_exited AS"
    " personsExited, max(persons_entered - persons_exited, 0) AS occupancy"
    " FROM visits WHERE session_id = ?"
)
TRACKING: Final = (
    "SELECT unique_event_id AS uniqueEventId, store_id AS storeId, shopper_id AS"
    " shopperId, time_of_origin AS timeOfOrigin, time_of_issue AS timeOfIssue,"
    " received_at AS receivedAt FROM tracking WHERE unique_event_id = ?"
)


class LedgerDB:
    """The ledger's SQLite database; use it from one thread (`SqliteStore` sees to that)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @classmethod
    def open(cls, settings: LedgerSettings, create: bool = True) -> LedgerDB:
        """Open the database at `settings.sqlite_path`, creating or migrating it; any number
        may open it at once. A reader's (`create=False`) writes nothing: it only checks
        that the schema is the current one.

        Raises `sqlite3.OperationalError` if it stays locked beyond `busy_timeout_ms` (see
        `passing`), `SchemaTooNew`, and `sqlite3.Error` or `OSError` for what waiting will
        not mend.
        """
        path, busy_timeout_ms = settings.sqlite_path, settings.busy_timeout_ms
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not the module's.
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {busy_timeout_ms:d}")
            ledger = cls(db)
            if not create:
                ledger.converse(schema.readable(DIALECT, str(path)))
                return ledger
            use_wal(db, busy_timeout_ms / 1000)
            db.execute(f"PRAGMA synchronous = {settings.synchronous}")
            ledger.migrate(path)
        except BaseException:
            db.close()
            raise
        return ledger

    def migrate(self, path: Path) -> None:
        """Bring the schema up to date in one write transaction, so that concurrent openers
        take turns."""
        with self._transaction():
            self.converse(schema.migrate(DIALECT, str(path)))

    def converse(self, conversation: schema.Conversation[T]) -> T:
        """Run one of `ledger.schema`'s conversations on this connection; its result."""
        answer = None
        try:
            while True:
                sql, args = conversation.send(answer)
                row = self._db.execute(sql, args).fetchone()
                answer = row[0] if row else None
        except StopIteration as done:
            result: T = done.value
            return result

    def close(self) -> None:
        self._db.close()

    def apply_batch(self, batch: Batch) -> int:
        now = datetime.now(UTC).isoformat()
        with self._transaction():
            fresh = self._unseen(batch.ids)
            pairs = zip(batch.ids, batch.kinds, strict=True)
            marks = [(i, k, now) for i, k in pairs if i in fresh]
            self._db.executemany(MARK_PROCESSED, marks)
            self._db.executemany(UPSERT_VISIT, batch.visit_rows(fresh))
            self._db.executemany(UPSERT_TRACKING, batch.tracking_rows(fresh))
        return len(fresh)

    def _unseen(self, ids: Sequence[str]) -> set[str]:
        """The ids not processed before."""
        seen = {row[0] for row in self._db.execute(SEEN, (orjson.dumps(ids).decode(),))}
        return set(ids) - seen

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
        return self._rows(OCCUPANCY.format(where=where), args)

    def visit(self, session_id: str) -> Row | None:
        rows = self._rows(VISIT, (session_id,))
        return rows[0] if rows else None

    def tracking(self, unique_event_id: str) -> Row | None:
        rows = self._rows(TRACKING, (unique_event_id,))
        return tracking_answer(rows[0] if rows else None)

    def prune(self, before: datetime) -> int:
        """Forget the ids of events applied before `before`; return how many were forgotten.

        A redelivery of such an event would count again: the retention must outlast
        any redelivery (retries, a replay of dead letters) by far.
        """
        with self._transaction():
            cursor = self._db.execute(PRUNE, (before.astimezone(UTC).isoformat(),))
        return cursor.rowcount

    def ping(self) -> None:
        self._db.execute("SELECT 1").fetchone()

    def _rows(self, sql: str, args: Sequence[object]) -> list[Row]:
        return [dict(row) for row in self._db.execute(sql, args)]


class SqliteStore:
    """A `LedgerDB` owned by one thread: work queued on it runs in order, even work whose
    awaiting task was cancelled."""

    errors: ClassVar[tuple[type[Exception], ...]] = (sqlite3.Error,)

    def __init__(self, db: LedgerDB, executor: ThreadPoolExecutor, path: Path) -> None:
        self._db = db
        self._executor = executor
        self._path = path

    @classmethod
    async def connect(cls, settings: LedgerSettings, create: bool = True) -> SqliteStore:
        """Open the ledger at `settings.sqlite_path`; `create=False` refuses a missing file.

        A lock held by another connection beyond `busy_timeout_ms` raises `LedgerUnavailable`
        (from the `sqlite3.OperationalError`, whose text it keeps)."""
        path = settings.sqlite_path
        if not create and not path.exists():
            raise LedgerMissing(f"no ledger database at {path}")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        try:
            db = await asyncio.get_running_loop().run_in_executor(
                executor, LedgerDB.open, settings, create
            )
        except sqlite3.OperationalError as exc:
            executor.shutdown(wait=False)
            if passing(exc):
                raise LedgerUnavailable(str(exc)) from exc
            raise
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(db, executor, path)

    @property
    def where(self) -> str:
        return str(self._path)

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run `function(db, *args)` on the ledger's thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, function, self._db, *args
        )

    async def apply(self, batch: Batch) -> int:
        return int(await self._call(LedgerDB.apply_batch, batch))

    async def prune(self, before: datetime) -> int:
        return int(await self._call(LedgerDB.prune, before))

    async def occupancy(self, store_id: int | None = None) -> list[Row]:
        rows: list[Row] = await self._read(LedgerDB.occupancy, store_id)
        return rows

    async def visit(self, session_id: str) -> Row | None:
        row: Row | None = await self._read(LedgerDB.visit, session_id)
        return row

    async def tracking(self, unique_event_id: str) -> Row | None:
        row: Row | None = await self._read(LedgerDB.tracking, unique_event_id)
        return row

    async def ping(self) -> None:
        await self._read(LedgerDB.ping)

    async def _read(self, function: Callable[..., Any], *args: Any) -> Any:
        """A read; a database that cannot answer now (locked, I/O) is `LedgerUnavailable`,
        as PostgreSQL's outages are, so that a reader answers 503 rather than 500."""
        try:
            return await self._call(function, *args)
        except sqlite3.Error as exc:
            raise LedgerUnavailable(str(exc)) from exc

    async def close(self) -> None:
        try:
            await self._call(LedgerDB.close)
        finally:
            self._executor.shutdown(wait=False)
