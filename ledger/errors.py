"""What goes wrong with the ledger: the database away for a while, the ledger unusable, or
an event it cannot apply."""

from __future__ import annotations


class LedgerError(Exception):
    """The ledger cannot be used, and waiting will not change that."""


class LedgerMissing(LedgerError):
    """A reader found no ledger where the settings point (a mistyped path, say)."""


class SchemaTooNew(LedgerError):
    """The database was created or migrated by a newer release than this one."""


class SchemaTooOld(LedgerMissing):
    """A reader found a schema that no worker of this release has migrated yet."""


class LedgerUnavailable(Exception):
    """The database is away for a while (down, restarting, locked): try again later."""


class BadEvent(ValueError):
    """An event the ledger cannot apply however often it tries (no sessionId, a time that
    is not ISO 8601): a worker dead-letters it."""
