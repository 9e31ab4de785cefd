"""The ledger's schema versions, written once for both backends.

A backend gives its own SQL (a `Dialect`: how it asks for a table, its migration steps);
what a version is, how it is found, which steps bring a schema up to date and which schemas
are refused are said here. `version`, `migrate` and `readable` talk to the database without
doing I/O themselves: each yields a statement with its arguments and is sent back the first
column of the statement's first row (None when it has none); `ledger.sqlite` and
`ledger.postgres` run them on their own connections.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from ledger.errors import LedgerMissing, SchemaTooNew, SchemaTooOld

# The layout both backends create. 1: visits, tracking and processed (a ledger without a
# version table is at 1); 2: the schema_version table itself.
SCHEMA_VERSION: Final = 2

T = TypeVar("T")
Statement = tuple[str, tuple[object, ...]]
Conversation = Generator[Statement, Any, T]


@dataclass(frozen=True, slots=True)
class Dialect:
    """A backend's SQL for its schema."""

    has_table: str  # true if the table its one parameter names exists
    placeholder: str  # of a parameter: "?", "%s"
    migrations: Mapping[int, Sequence[str]]  # step n takes the schema from n - 1 to n


def version(dialect: Dialect) -> Conversation[int]:
    """The version table's, or 1 for the layout from before it, or 0 for none."""
    if (yield dialect.has_table, ("schema_version",)):
        return int((yield "SELECT max(version) FROM schema_version", ()) or 0)
    return 1 if (yield dialect.has_table, ("processed",)) else 0


def migrate(dialect: Dialect, where: str) -> Conversation[None]:
    """Bring the schema to `SCHEMA_VERSION`, in the transaction the caller runs it in;
    refuse a schema newer than this release knows."""
    found = yield from version(dialect)
    check_not_newer(found, where)
    if found == SCHEMA_VERSION:
        return
    for step in range(found + 1, SCHEMA_VERSION + 1):
        for statement in dialect.migrations[step]:
            yield statement, ()
    yield "DELETE FROM schema_version", ()
    yield f"INSERT INTO schema_version VALUES ({dialect.placeholder})", (SCHEMA_VERSION,)


def readable(dialect: Dialect, where: str) -> Conversation[None]:
    """A reader writes nothing, migrations included: it reads only the current schema."""
    found = yield from version(dialect)
    if found == 0:
        raise LedgerMissing(f"no ledger at {where} (no worker has created it yet)")
    check_not_newer(found, where)
    if found < SCHEMA_VERSION:
        raise SchemaTooOld(
            f"the ledger at {where} has schema version {found}: a worker of this release "
            "migrates it when it starts"
        )


def check_not_newer(version: int, where: str) -> None:
    """A schema a newer release made is refused: this one would misread it."""
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the ledger at {where} has schema version {version}, newer than this "
            f"release's {SCHEMA_VERSION}: run a release that knows it"
        )
