"""The ledger as the API reads it: opened in the background, and kept open until stopped.

The API answers before the ledger opens, and while it cannot be opened (no worker has
created it yet, PostgreSQL is down): `/readyz` says why, the reads answer 503.
"""

from __future__ import annotations

import asyncio
import logging

from core.aio import backing_off, retrying
from core.settings import LedgerSettings
from ledger import ledger
from ledger.errors import LedgerError

log = logging.getLogger(__name__)


class NotOpen(Exception):
    """The ledger is not open (yet); the message says why."""


class Reader:
    """Holds the open ledger, or why there is none; `keep_open` is its only writer."""

    def __init__(self, settings: LedgerSettings, retry_max_s: float) -> None:
        self._settings = settings
        self._retry_max_s = retry_max_s
        self._ledger: ledger.Ledger | None = None
        self._why = "the ledger is being opened"
        self.tried = asyncio.Event()  # set once the first attempt has succeeded or failed

    @property
    def where(self) -> str:
        return ledger.where(self._settings)

    def current(self) -> ledger.Ledger:
        """The open ledger; `NotOpen` while there is none."""
        if self._ledger is None:
            raise NotOpen(self._why)
        return self._ledger

    async def keep_open(self, stop: asyncio.Event) -> None:
        """Open the ledger (read-only: never create it), retrying with backoff, until `stop`."""

        async def hold() -> None:
            if not stop.is_set():
                await self._hold(stop)

        await retrying(hold, (LedgerError,), backing_off(self._retry_max_s, stop, self._failed))

    async def _hold(self, stop: asyncio.Event) -> None:
        async with ledger.opened(self._settings, create=False) as opened:
            self._ledger = opened
            self.tried.set()
            log.info("ledger open", extra={"db": opened.where})
            try:
                await stop.wait()
            finally:
                self._ledger, self._why = None, "the service is stopping"

    def _failed(self, exc: Exception, pause_s: float) -> None:
        self._why = str(exc)
        self.tried.set()
        log.warning(
            "cannot open the ledger; retrying", extra={"error": str(exc), "retry_in_s": pause_s}
        )
