"""The ledger on PostgreSQL: any number of workers, on any number of machines, one ledger.

A batch is one statement, so one round trip and one transaction: its events' ids go into
`processed` with ON CONFLICT DO NOTHING, whose RETURNING names the events no worker had
recorded yet; only those feed the visit and tracking upserts, merged per row and written
in key order. Two workers given the same event (a redelivery) thus apply it once: the
second one's insert waits for the first's commit and then skips it. Counters add to the
stored row inside the upsert (no read-modify-write, so no lost update), and rows are locked
in key order, so that two batches touching the same visits do not deadlock; a deadlock or
serialization failure that happens all the same is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, ClassVar, Final, TypeVar

import psycopg
from psycopg import errors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from core.aio import retrying
from core.logs import redact
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
from ledger.errors import LedgerError, LedgerUnavailable

T = TypeVar("T")

# "C": text compares as its bytes, as in SQLite, so that "the greatest value" of a text
# field is the same on both backends whatever the database's locale.
DIALECT: Final = schema.Dialect(
    has_table="SELECT to_regclass(%s) IS NOT NULL",
    placeholder="%s",
    migrations={
        1: (
            """CREATE TABLE processed (
            event_id text COLLATE "C" PRIMARY KEY,
            kind text NOT NULL,
            processed_at timestamptz NOT NULL DEFAULT now()
        )""",
            "CREATE INDEX processed_by_time ON processed (processed_at)",
            """CREATE TABLE visits (
            session_id text COLLATE "C" PRIMARY KEY,
            store_id bigint,
            oasis_store_id bigint,
            aifi_unique_store_id text COLLATE "C",
            store_external_id text COLLATE "C",
            customer_id text COLLATE "C",
            customer_role text COLLATE "C",
            shopper_id text COLLATE "C",
            group_size bigint,
            first_entered timestamptz,
            last_exited timestamptz,
            persons_entered bigint NOT NULL,
            persons_exited bigint NOT NULL
        )""",
            "CREATE INDEX visits_by_store ON visits (store_id)",
            """CREATE TABLE tracking (
            unique_event_id text COLLATE "C" PRIMARY KEY,
            store_id bigint,
            shopper_id text COLLATE "C",
            time_of_origin timestamptz,
            time_of_issue timestamptz,
            received_at timestamptz
        )""",
        ),
        2: ("CREATE TABLE schema_version (version integer NOT NULL)",),
    },
)
# Openers that find the schema to create or migrate take turns on this advisory lock.
MIGRATION_LOCK: Final = 0x41694669

TYPES: Final = {
    "store_id": "bigint",
    "oasis_store_id": "bigint",
    "group_size": "bigint",
    "persons_entered": "int",
    "persons_exited": "int",
    **dict.fromkeys(
        ("first_entered", "last_exited", "time_of_origin", "time_of_issue", "received_at"),
        "timestamptz",
    ),
}
SCALAR: Final = {"max": "greatest", "min": "least"}


def _unnest(prefix: str, fields: tuple[str, ...]) -> str:
    """Rows out of one array parameter per column: `%(<prefix>event_id)s::text[], ...`."""
    arrays = ", ".join(f"%({prefix}{f})s::{TYPES.get(f, 'text')}[]" for f in ("event_id", *fields))
    return f"unnest({arrays}) AS r(event_id, {', '.join(fields)})"


def _upsert(table: str, prefix: str, fields: tuple[str, ...], merge: dict[str, str]) -> str:
    """Insert the fresh events' rows of `table`, merged per key, in key order."""
    key = fields[0]
    picks = ", ".join(f"{how}(r.{f})" for f, how in merge.items())
    # greatest() and least() ignore null, as max() and min() do.
    sets = ", ".join(
        f"{f} = t.{f} + excluded.{f}"
        if how == "sum"
        else f"{f} = {SCALAR[how]}(t.{f}, excluded.{f})"
        for f, how in merge.items()
    )
    return (
        f"INSERT INTO {table} AS t ({', '.join(fields)})"
        f" SELECT r.{key}, {picks} FROM {_unnest(prefix, fields)} JOIN fresh USING (event_id)"
        f' GROUP BY r.{key} ORDER BY r.{key} COLLATE "C"'
        f" ON CONFLICT ({key}) DO UPDATE SET {sets} RETURNING 1"
    )


# Data-modifying CTEs run once and to completion; the upserts read `fresh`, the events
# this statement recorded, so they run after it.
APPLY: Final = (
    "WITH fresh AS ("
    " INSERT INTO processed (event_id, kind)"
    " SELECT * FROM unnest(%(event_id)s::text[], %(kind)s::text[]) AS e(event_id, kind)"
    ' ORDER BY event_id COLLATE "C"'
    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id),"
    f" visited AS ({_upsert('visits', 'v_', VISIT_FIELDS, VISIT_MERGE)}),"
    f" tracked AS ({_upsert('tracking', 't_', TRACKING_FIELDS, TRACKING_MERGE)})"
    " SELECT count(*) FROM fresh"
)


def _time(column: str, name: str) -> str:
    """A timestamptz as the same fixed-width UTC text that SQLite stores."""
    return f'to_char({column} AT TIME ZONE \'UTC\', \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\') AS "{name}"'


OCCUPANCY: Final = (
    'SELECT store_id AS "storeId",'
    " sum(greatest(persons_entered - persons_exited, 0))::bigint AS occupancy,"
    ' count(*) FILTER (WHERE persons_entered > persons_exited) AS "openSessions",'
    " count(*) AS sessions FROM visits {where} GROUP BY store_id ORDER BY store_id NULLS FIRST"
)
VISIT: Final = (
    'SELECT session_id AS "sessionId", store_id AS "storeId",'
    ' oasis_store_id AS "oasisApiStoreId", aifi_unique_store_id AS "aifiUniqueStoreId",'
    ' store_external_id AS "storeExternalId", customer_id AS "customerId",'
    ' customer_role AS "customerRole", shopper_id AS "shopperId", group_size AS "groupSize",'
    f" {_time('first_entered', 'firstEntered')}, {_time('last_exited', 'lastExited')},"
    ' persons_entered AS "personsEntered", persons_exited AS "personsExited",'
    " greatest(persons_entered - persons_exited, 0) AS occupancy"
    " FROM visits WHERE session_id = %s"
)
TRACKING: Final = (
    'SELECT unique_event_id AS "uniqueEventId", store_id AS "storeId",'
    ' shopper_id AS "shopperId",'
    f" {_time('time_of_origin', 'timeOfOrigin')}, {_time('time_of_issue', 'timeOfIssue')},"
    f" {_time('received_at', 'receivedAt')} FROM tracking WHERE unique_event_id = %s"
)

# Errors of a server that answered and refused, that waiting does not mend: a wrong
# password, a database that does not exist, a missing privilege. Everything else on the
# way to the server (refused, reset, timed out; starting up, shutting down, too many
# clients) passes. libpq reports a refused connection without a SQLSTATE, hence the text.
STARTING_OR_BUSY: Final = (
    "the database system is",  # starting up, shutting down, in recovery mode, not yet ...
    "too many clients",
    "connection slots are reserved",
)
RETRIED: Final = (errors.DeadlockDetected, errors.SerializationFailure)
TRANSACTION_RETRIES: Final = 20


def passing(exc: BaseException) -> bool:
    """True if `exc` means the database is away for a while rather than refusing us."""
    if isinstance(exc, OSError | TimeoutError | psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    if exc.sqlstate:
        # From a live connection: 08 connection, 40 rollback (deadlock, serialization),
        # 53 resources, 55 lock not available, 57 shutdown.
        return exc.sqlstate[:2] in ("08", "40", "53", "55", "57")
    text = str(exc)
    return "FATAL:" not in text or any(reason in text for reason in STARTING_OR_BUSY)


def _columns(prefix: str, fields: tuple[str, ...], rows: list[tuple[str, Row]]) -> dict[str, Any]:
    """One array per column, as the `unnest` of `_upsert` takes them."""
    arrays: dict[str, Any] = {f"{prefix}event_id": [event_id for event_id, _ in rows]}
    for field in fields:
        arrays[prefix + field] = [row[field] for _, row in rows]
    return arrays


def parameters(batch: Batch) -> dict[str, Any]:
    visits = [(a.event_id, a.row) for a in batch.visits]
    tracking = [(a.event_id, a.row) for a in batch.tracking]
    return {
        "event_id": list(batch.ids),
        "kind": list(batch.kinds),
        **_columns("v_", VISIT_FIELDS, visits),
        **_columns("t_", TRACKING_FIELDS, tracking),
    }


async def migrate(
    connection: psycopg.AsyncConnection[Any], where: str, create: bool, timeout_s: float
) -> None:
    """Bring the schema up to date in one transaction, one opener at a time (a reader's,
    `create=False`, only checks it). Waiting longer than `timeout_s` for another opener
    raises `LockNotAvailable`, a passing error."""
    if not create:
        await converse(connection, schema.readable(DIALECT, where))
        return
    async with connection.transaction():
        await connection.execute(f"SET LOCAL lock_timeout = {int(timeout_s * 1000):d}")
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await converse(connection, schema.migrate(DIALECT, where))


async def converse(
    connection: psycopg.AsyncConnection[Any], conversation: schema.Conversation[T]
) -> T:
    """Run one of `ledger.schema`'s conversations on `connection`; its result."""
    answer = None
    try:
        while True:
            sql, args = conversation.send(answer)
            cursor = await connection.execute(sql, args)
            row = await cursor.fetchone() if cursor.description else None
            answer = row[0] if row else None
    except StopIteration as done:
        result: T = done.value
        return result


class PostgresStore:
    """The ledger in a PostgreSQL database, through a pool of connections in autocommit
    mode (each batch is one statement, hence one transaction)."""

    errors: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)

    def __init__(self, pool: AsyncConnectionPool[Any], where: str, timeout_s: float) -> None:
        self._pool = pool
        self._where = where
        self._timeout_s = timeout_s

    @classmethod
    async def connect(cls, settings: LedgerSettings, create: bool = True) -> PostgresStore:
        """Connect, create or migrate the schema, and open the pool.

        Raises `LedgerUnavailable` while the server is away or starting, `LedgerError`
        for what waiting will not mend."""
        where = redact(settings.url)
        connect_timeout = max(1, math.ceil(settings.timeout_s))
        try:
            async with await psycopg.AsyncConnection.connect(
                settings.url, connect_timeout=connect_timeout
            ) as connection:
                await migrate(connection, where, create, settings.timeout_s)
        except psycopg.Error as exc:
            if passing(exc):
                raise LedgerUnavailable(str(exc)) from exc
            raise LedgerError(f"cannot open the ledger at {where}: {exc}") from exc
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.url,
            min_size=1,
            max_size=settings.pool_size,
            timeout=settings.timeout_s,
            kwargs={"autocommit": True, "connect_timeout": connect_timeout},
            open=False,
            name="ledger",
        )
        await pool.open()
        return cls(pool, where, settings.timeout_s)

    @property
    def where(self) -> str:
        return self._where

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; the database being away raises `LedgerUnavailable`."""
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._pool.connection() as connection,
            ):
                yield connection
        except (psycopg.Error, OSError, TimeoutError) as exc:
            if passing(exc):
                raise LedgerUnavailable(f"{type(exc).__name__}: {exc}") from exc
            raise

    async def apply(self, batch: Batch) -> int:
        values = parameters(batch)

        async def once() -> int:
            async with self._connection() as connection:
                row = await (await connection.execute(APPLY, values)).fetchone()
            return int(row[0]) if row else 0

        async def again(exc: Exception, failures: int) -> None:
            if not isinstance(exc.__cause__, RETRIED) or failures + 1 == TRANSACTION_RETRIES:
                raise exc
            # Rolled back whole: nothing of the batch was recorded, so it runs again as new.
            await asyncio.sleep(random.uniform(0, 0.01 * 2 ** min(failures, 6)))

        return await retrying(once, (LedgerUnavailable,), again)

    async def prune(self, before: datetime) -> int:
        async with self._connection() as connection:
            cursor = await connection.execute(
                "DELETE FROM processed WHERE processed_at < %s", (before,)
            )
            return cursor.rowcount

    async def occupancy(self, store_id: int | None = None) -> list[Row]:
        if store_id is None:
            return await self._rows(OCCUPANCY.format(where=""), ())
        return await self._rows(OCCUPANCY.format(where="WHERE store_id = %s"), (store_id,))

    async def visit(self, session_id: str) -> Row | None:
        rows = await self._rows(VISIT, (session_id,))
        return rows[0] if rows else None

    async def tracking(self, unique_event_id: str) -> Row | None:
        rows = await self._rows(TRACKING, (unique_event_id,))
        return tracking_answer(rows[0] if rows else None)

    async def ping(self) -> None:
        await self._rows("SELECT 1 AS ok", ())

    async def close(self) -> None:
        await self._pool.close()

    async def _rows(self, sql: str, args: tuple[Any, ...]) -> list[Row]:
        async with self._connection() as connection:
            cursor = connection.cursor(row_factory=dict_row)
            await cursor.execute(sql, args)
            return await cursor.fetchall()
