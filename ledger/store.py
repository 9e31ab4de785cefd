"""What a backend of the ledger is (`ledger.sqlite`, `ledger.postgres`): the one interface
`ledger.ledger.Ledger` uses, whatever database holds the rows."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Protocol

from ledger.effects import Batch, Row


class Store(Protocol):
    """A backend of the ledger. Reads return rows keyed as the CLI prints them."""

    errors: ClassVar[tuple[type[Exception], ...]]  # what its database raises

    @property
    def where(self) -> str:
        """Where the ledger is, for logs and messages (never a password)."""

    async def apply(self, batch: Batch) -> int:
        """Apply the batch's new events in one transaction; how many were new.

        Raises `LedgerUnavailable` when the database is away for a while."""

    async def prune(self, before: datetime) -> int:
        """Forget the ids of events applied before `before`; how many were forgotten."""

    async def occupancy(self, store_id: int | None = None) -> list[Row]:
        """Per store: people inside (never below 0 per session), open and all sessions."""

    async def visit(self, session_id: str) -> Row | None: ...

    async def tracking(self, unique_event_id: str) -> Row | None: ...

    async def ping(self) -> None:
        """Raise `LedgerUnavailable` unless the database answers now (a readiness probe)."""

    async def close(self) -> None: ...
