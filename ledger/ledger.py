"""The presence ledger: which people are in which store, kept by the built-in workers.

`opened(settings)` gives a `Ledger` on the backend that `ledger.url` names: a SQLite file
(the default: nothing to install, the workers of one machine) or PostgreSQL (any number of
workers on any number of machines). Both have the same schema meaning and answer the same
reads; what an event does is defined once, in `ledger.effects`.

Each batch is applied in the transaction that records its events' ids as processed, so an
effect and its "done" mark commit together, a redelivered event has its effect once, and
a message is acked only once its batch committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from core.aio import Wait, backoff_s, paused, retrying
from core.contract import Event
from core.logs import redact
from core.settings import LedgerSettings
from ledger.effects import Batch, Row
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.postgres import PostgresStore
from ledger.sqlite import SqliteStore
from ledger.store import Store

log = logging.getLogger(__name__)

OUTAGE_RETRY_MAX_S: Final = 5.0
BACKENDS: Final[dict[str, Callable[[LedgerSettings, bool], Awaitable[Store]]]] = {
    "sqlite": SqliteStore.connect,
    "postgresql": PostgresStore.connect,
}


async def _sleep(exc: Exception, attempt: int) -> None:
    await asyncio.sleep(backoff_s(attempt, OUTAGE_RETRY_MAX_S))


@dataclass(frozen=True, slots=True)
class Outage:
    """How a running worker waits for a database that went away: `wait` before each new
    attempt (it may raise to give up), `over` once the database answers again."""

    wait: Wait = _sleep
    over: Callable[[], None] = lambda: None


def where(settings: LedgerSettings) -> str:
    """The ledger's location for logs and messages, without a password."""
    return redact(settings.url) if settings.backend == "postgresql" else str(settings.sqlite_path)


class Ledger:
    """The ledger on one backend: what the workers apply and the reads the CLI prints."""

    def __init__(self, store: Store, outage: Outage | None = None) -> None:
        self._store = store
        self._outage = outage or Outage()

    @property
    def where(self) -> str:
        return self._store.where

    async def apply(self, events: Sequence[Event]) -> int:
        """Apply `events` all or nothing; how many were new. While the database is away
        (PostgreSQL down or restarting) it waits, as `Outage` says, and tries again: the
        deliveries stay in hand, unacked."""
        batch = Batch.of(events)  # a `BadEvent` fails the batch before any waiting
        waited = False

        async def wait(exc: Exception, failures: int) -> None:
            nonlocal waited
            log.warning("ledger unavailable", extra={"where": self.where, "error": str(exc)})
            await self._outage.wait(exc, failures)
            waited = True

        applied = await retrying(lambda: self._store.apply(batch), (LedgerUnavailable,), wait)
        if waited:
            self._outage.over()
        return applied

    async def occupancy(self, store_id: int | None = None) -> list[Row]:
        """Per store: people inside (never below 0 per session), open and all sessions."""
        return await self._store.occupancy(store_id)

    async def visit(self, session_id: str) -> Row | None:
        return await self._store.visit(session_id)

    async def tracking(self, unique_event_id: str) -> Row | None:
        return await self._store.tracking(unique_event_id)

    async def ping(self) -> None:
        """Raise `LedgerUnavailable` unless the database answers now."""
        await self._store.ping()

    async def prune(self, retention_s: float) -> int:
        return await self._store.prune(datetime.now(UTC) - timedelta(seconds=retention_s))

    async def keep_pruned(self, retention_s: float, interval_s: float, stop: asyncio.Event) -> None:
        """Prune every `interval_s` until `stop` is set."""
        failures: tuple[type[Exception], ...] = (LedgerUnavailable, *self._store.errors)
        while True:
            try:
                removed = await self.prune(retention_s)
            except failures as exc:
                # Busy or failing: nothing is lost by trying again next time.
                log.warning("pruning processed event ids failed", extra={"error": str(exc)})
            else:
                if removed:
                    log.info("forgot processed event ids", extra={"count": removed})
            if await paused(interval_s, stop):
                return


async def connect(settings: LedgerSettings, retry: Wait | None, create: bool = True) -> Store:
    """The backend `settings` name, opened; its schema created or migrated if `create`.

    While the database is away (locked, down, starting), `retry(error, attempt)` is awaited
    before each new attempt; without `retry`, or for any other failure, `LedgerError`."""
    errors: tuple[type[Exception], ...] = (*SqliteStore.errors, *PostgresStore.errors, OSError)

    def cannot_open(exc: Exception) -> LedgerError:
        return LedgerError(f"cannot open the ledger at {where(settings)}: {exc}")

    async def open_once() -> Store:
        try:
            return await BACKENDS[settings.backend](settings, create)
        except errors as exc:
            raise cannot_open(exc) from exc

    async def give_up(exc: Exception, failures: int) -> None:
        raise cannot_open(exc) from exc

    return await retrying(open_once, (LedgerUnavailable,), retry or give_up)


@contextlib.asynccontextmanager
async def opened(
    settings: LedgerSettings,
    retry: Wait | None = None,
    outage: Outage | None = None,
    create: bool = True,
) -> AsyncIterator[Ledger]:
    """The ledger `settings` name, closed on exit. A writer's (`create`, the default) is
    created if missing and pruned in the background; a reader's must exist already.
    See `connect` for `retry`, `Ledger.apply` for `outage`."""
    store = await connect(settings, retry, create)
    try:
        if not create:
            yield Ledger(store, outage)
            return
        async with pruning(Ledger(store, outage), settings) as ledger:
            yield ledger
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def pruning(ledger: Ledger, settings: LedgerSettings) -> AsyncIterator[Ledger]:
    """`ledger`, pruned in the background while the block runs, unless retention is 0."""
    if not settings.processed_retention_days:
        yield ledger
        return
    retention_s = settings.processed_retention_days * 86_400
    stop = asyncio.Event()
    task = asyncio.create_task(ledger.keep_pruned(retention_s, settings.prune_interval_s, stop))
    try:
        yield ledger
    finally:
        # The event as well as the cancel: psycopg turns a cancel that lands mid-query into
        # an error of its own (QueryCanceled), which the loop would take for a failed prune.
        stop.set()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # The pruner's own end; a cancel aimed at whoever closes the ledger goes on.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
