"""What events do to the presence ledger, whatever database holds it.

One visit row per session and one tracking row per `uniqueEventId`. Every effect commutes
(counters add; times keep the earliest or latest; other fields keep the greatest value that
is not null), so every order of the same events ends in the same state, and a batch's
effects can be merged per row before they are written: a backend writes one row per visit
and per tracking match, in key order, whatever the batch holds.

Each backend (`ledger.sqlite`, `ledger.postgres`) implements `ledger.store.Store` with
the same schema meaning, records an event's id in the transaction that applies its effect,
and applies only the events whose id it had not recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from core.contract import Event
from core.times import utc
from ledger.errors import BadEvent

Row = dict[str, Any]

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


def instant(value: object) -> str | None:
    """A time as fixed-width UTC text, so that comparing the text compares the times."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise BadEvent(f"not an ISO time: {value!r}") from exc
    aware = utc(moment)
    # %Y is not zero-padded below year 1000 on glibc, which would break the text order.
    return f"{aware.year:04d}" + aware.strftime("-%m-%dT%H:%M:%S.%fZ")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def visit_row(event: Event) -> Row:
    """One person entering or leaving: the twin "left" calls of a group are two rows' worth."""
    data = event.data
    if not data.get("sessionId"):
        raise BadEvent(f"{event.kind} event {event.id} has no sessionId")
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
        raise BadEvent(f"tracking event {event.id} has no uniqueEventId")
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
