"""Reaching under the ledger: its schema version, and a ledger as an older release left it."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime

import psycopg

from core.settings import LedgerSettings
from ledger import postgres as ledger_postgres, schema, sqlite as ledger_sqlite

V1_VISIT = (
    "INSERT INTO visits (session_id, store_id, persons_entered, persons_exited)"
    " VALUES ({p}, {p}, 1, 0)"
)
V1_PROCESSED = "INSERT INTO processed VALUES ({p}, 'entered', {p})"


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
