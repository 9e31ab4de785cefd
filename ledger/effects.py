"""What events do to the presence ledger, whatever database holds it.

One visit row per session and one tracking row per `uniqueEventId`. Every effect commutes
(counters add; times keep the earliest or latest; other fields keep the greatest value that
is not null), so every order of the same events ends in the same state, and a batch's
effects can be merged per row before they are written: a backend writes one row per visit
and per tracking match, in key order, whatever the batch holds.

Each backend (`consumers.ledger_sqlite`, `consumers.ledger_postgres`) implements `Store` with
the same schema meaning, records an event's id in the transaction that applies its effect,
and applies only the events whose id it had not recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final, Protocol

from consumers.handler import Reject
from core.contract import Event
from core.times import utc

Row = dict[str, Any]

# The layout both backends create. 1: visits, tracking and processed (a SQLite ledger
# without a version table is at 1); 2: the schema_version table itself.
SCHEMA_VERSION: Final = 2

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
TRACKING_FACTS: Final = ("store_id", "shopper_id")
TRACKING_TIMES: Final = ("time_of_origin", "time_of_issue", "received_at")
TRACKING_FIELDS: Final = ("unique_event_id", *TRACKING_FACTS, *TRACKING_TIMES)
# How each non-key column of a row merges with another row of the same key.
VISIT_MERGE: Final = {
    **dict.fromkeys(VISIT_FACTS, "max"),
    "first_entered": "min",
    "last_exited": "max",
    "persons_entered": "sum",
    "persons_exited": "sum",
}
TRACKING_MERGE: Final = {
    **dict.fromkeys(TRACKING_FACTS, "max"),
    **dict.fromkeys(TRACKING_TIMES, "min"),
}


class LedgerError(Exception):
    """The ledger cannot be used, and waiting will not change that."""


class LedgerMissing(LedgerError):
    """A reader found no ledger where the settings point (a mistyped path, say)."""


class SchemaTooNew(LedgerError):
    """The database was created or migrated by a newer release than this one."""


class SchemaTooOld(LedgerMissing):
    """A reader found a schema that no worker of this release has migrated yet."""


def check_not_newer(version: int, where: str) -> None:
    """A schema a newer release made is refused: this one would misread it."""
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the ledger at {where} has schema version {version}, newer than this "
            f"release's {SCHEMA_VERSION}: run a release that knows it"
        )


def check_readable(version: int, where: str) -> None:
    """A reader writes nothing, migrations included: it reads only the current schema."""
    if version == 0:
        raise LedgerMissing(f"no ledger at {where} (no worker has created it yet)")
    check_not_newer(version, where)
    if version < SCHEMA_VERSION:
        raise SchemaTooOld(
            f"the ledger at {where} has schema version {version}: a worker of this release "
            "migrates it when it starts"
        )


class LedgerUnavailable(Exception):
    """The database is away for a while (down, restarting, locked): try again later."""


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


def _pick(how: str, old: Any, new: Any) -> Any:
    """SQL's merge of two values: null gives way to a value, as in max() and min()."""
    if how == "sum":
        return old + new
    if old is None or new is None:
        return new if old is None else old
    return max(old, new) if how == "max" else min(old, new)


def merged(rows: Iterable[Row], key: str, merge: dict[str, str]) -> list[Row]:
    """One row per `key`, each the merge of every row with that key, sorted by key.

    Sorted, so that two transactions writing the same rows lock them in the same order.
    """
    by_key: dict[Any, Row] = {}
    for row in rows:
        old = by_key.get(row[key])
        by_key[row[key]] = (
            dict(row)
            if old is None
            else {key: row[key]} | {f: _pick(how, old[f], row[f]) for f, how in merge.items()}
        )
    return [by_key[k] for k in sorted(by_key)]


@dataclass(frozen=True, slots=True)
class Applied:
    """One distinct event of a batch and its row."""

    event_id: str
    kind: str
    row: Row


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch's distinct events, sorted by id, each with its row; built before anything is
    written, so that a bad event fails the batch before it touches the database."""

    visits: tuple[Applied, ...]
    tracking: tuple[Applied, ...]
    # Every distinct event id, sorted (the order rows are locked in), and its kind.
    ids: tuple[str, ...]
    kinds: tuple[str, ...]

    @classmethod
    def of(cls, events: Sequence[Event]) -> Batch:
        distinct = {event.id: event for event in events}
        built = [_applied(distinct[i]) for i in sorted(distinct)]
        return cls(
            tuple(a for a in built if a.kind != "tracking"),
            tuple(a for a in built if a.kind == "tracking"),
            tuple(a.event_id for a in built),
            tuple(a.kind for a in built),
        )

    def visit_rows(self, fresh: set[str]) -> list[Row]:
        """The merged visit rows of the events in `fresh`, one per session."""
        return merged(
            (a.row for a in self.visits if a.event_id in fresh), "session_id", VISIT_MERGE
        )

    def tracking_rows(self, fresh: set[str]) -> list[Row]:
        rows = (a.row for a in self.tracking if a.event_id in fresh)
        return merged(rows, "unique_event_id", TRACKING_MERGE)


BUILDERS: Final[dict[str, Callable[[Event], Row]]] = {
    "entered": visit_row,
    "exited": visit_row,
    "tracking": tracking_row,
}


def _applied(event: Event) -> Applied:
    return Applied(event.id, event.kind, BUILDERS[event.kind](event))


def tracking_answer(row: Row | None) -> Row | None:
    """A tracking row as read: with `matched`, true once a shopper is known."""
    return None if row is None else row | {"matched": row["shopperId"] is not None}


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

    async def processed(self) -> int:
        """How many distinct events the ledger remembers having applied."""

    async def ping(self) -> None:
        """Raise `LedgerUnavailable` unless the database answers now (a readiness probe)."""

    async def close(self) -> None: ...
