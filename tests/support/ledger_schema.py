"""Reaching under the ledger: its schema version, a ledger as an older release left it, and
how many events it holds as processed (the progress the tests and the benchmarks watch)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import psycopg

from core.settings import LedgerSettings
from ledger import postgres as ledger_postgres, schema, sqlite as ledger_sqlite

V1_VISIT = (
    "INSERT INTO visits (session_id, store_id, persons_entered, persons_exited)"
    " VALUES ({p}, {p}, 1, 0)"
)
V1_PROCESSED = "INSERT INTO processed VALUES ({p}, 'entered', {p})"
COUNT_PROCESSED: Final = "SELECT count(*) FROM processed"
Counter = Callable[[], Awaitable[int]]


async def version(settings: LedgerSettings) -> int:
    if settings.backend == "sqlite":
        # A bare connection: opening the ledger would migrate what it reads.
        with contextlib.closing(sqlite3.connect(settings.sqlite_path)) as db:
            return ledger_sqlite.LedgerDB(db).converse(schema.version(ledger_sqlite.DIALECT))
    async with await psycopg.AsyncConnection.connect(settings.url) as connection:
        return await ledger_postgres.converse(connection, schema.version(ledger_postgres.DIALECT))


async def set_version(settings: LedgerSettings, number: int) -> None:
    if settings.backend == "sqlite":
        with contextlib.closing(sqlite3.connect(settings.sqlite_path)) as db, db:
            db.execute("UPDATE schema_version SET version = ?", (number,))
        return
    async with await psycopg.AsyncConnection.connect(settings.url, autocommit=True) as connection:
        await connection.execute("UPDATE schema_version SET version = %s", (number,))


async def create_version_1(settings: LedgerSettings, session: str, store: int) -> None:
    """The layout before the version table, holding one visit and its processed event."""
    if settings.backend == "sqlite":
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(settings.sqlite_path)) as db, db:
            for statement in ledger_sqlite.DIALECT.migrations[1]:
                db.execute(statement)
            db.execute(V1_VISIT.format(p="?"), (session, store))
            db.execute(V1_PROCESSED.format(p="?"), ("old-event", datetime.now(UTC).isoformat()))
        return
    async with await psycopg.AsyncConnection.connect(settings.url, autocommit=True) as connection:
        for statement in ledger_postgres.DIALECT.migrations[1]:
            await connection.execute(statement)
        await connection.execute(V1_VISIT.format(p="%s"), (session, store))
        await connection.execute(V1_PROCESSED.format(p="%s"), ("old-event", datetime.now(UTC)))


def sqlite_processed(path: Path) -> int:
    """`processed` of the SQLite ledger at `path`, whose schema it creates if no worker has
    yet (so that a test asking before its workers started waits for none of them)."""
    ledger_sqlite.LedgerDB.open(LedgerSettings(db=path)).close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute(COUNT_PROCESSED).fetchone()[0])


async def processed(settings: LedgerSettings) -> int:
    """How many event ids the ledger holds as processed, through a connection of its own."""
    async with processed_counter(settings) as count:
        return await count()


@contextlib.asynccontextmanager
async def processed_counter(settings: LedgerSettings) -> AsyncIterator[Counter]:
    """`processed` on one connection, for a caller that asks often; each count sees what
    was committed before it."""
    if settings.backend == "sqlite":
        with contextlib.closing(sqlite3.connect(settings.sqlite_path)) as db:

            async def count_sqlite() -> int:
                return int(db.execute(COUNT_PROCESSED).fetchone()[0])

            yield count_sqlite
        return
    async with await psycopg.AsyncConnection.connect(settings.url, autocommit=True) as connection:

        async def count_postgresql() -> int:
            [(number,)] = await (await connection.execute(COUNT_PROCESSED)).fetchall()
            return int(number)

        yield count_postgresql
