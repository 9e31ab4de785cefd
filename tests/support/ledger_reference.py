"""The ledger's reference model: what the ledger must read after a list of events, computed
from the events alone, and a comparison of a live ledger against it.

Written apart from the backends on purpose: per session, count the distinct entry and exit
events, keep the earliest entry and the latest exit, and the greatest value of every other
field; per tracking match, the earliest times and the greatest shopper; an event id seen
twice is one event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from core.contract import Event
from core.settings import LedgerSettings
from ledger.effects import instant
from ledger.ledger import Ledger, opened as open_ledger
from tests.support.ledger_schema import processed

Rows = dict[str, dict[str, Any]]

VISIT_FACTS = {
    "storeId": "storeId",
    "oasisApiStoreId": "oasisApiStoreId",
    "aifiUniqueStoreId": "aifiUniqueStoreId",
    "storeExternalId": "storeExternalId",
    "customerId": "customerId",
    "customerRole": "customerRole",
    "shopperId": "shopperId",
    "groupSize": "groupSize",
}


def _greatest(values: Iterable[Any]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _least(values: Iterable[Any]) -> Any:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def distinct(events: Iterable[Event]) -> list[Event]:
    return list({event.id: event for event in events}.values())


def expected_visits(events: Iterable[Event]) -> Rows:
    sessions: dict[str, list[Event]] = {}
    for event in distinct(events):
        if event.kind != "tracking":
            sessions.setdefault(str(event.data["sessionId"]), []).append(event)
    return {session: _visit(session, of) for session, of in sessions.items()}


def _visit(session: str, events: list[Event]) -> dict[str, Any]:
    entries = [e for e in events if e.kind == "entered"]
    exits = [e for e in events if e.kind == "exited"]
    facts = {
        name: _greatest(_text(e.data.get(field), name) for e in events)
        for name, field in VISIT_FACTS.items()
    }
    return {
        "sessionId": session,
        **facts,
        "firstEntered": _least(instant(e.data.get("timeOfOrigin")) for e in entries),
        "lastExited": _greatest(instant(e.data.get("timeOfOrigin")) for e in exits),
        "personsEntered": len(entries),
        "personsExited": len(exits),
        "occupancy": max(len(entries) - len(exits), 0),
    }


def _text(value: Any, name: str) -> Any:
    numeric = name in ("storeId", "oasisApiStoreId", "groupSize")
    return value if value is None or numeric else str(value)


def expected_tracking(events: Iterable[Event]) -> Rows:
    matches: dict[str, list[Event]] = {}
    for event in distinct(events):
        if event.kind == "tracking":
            matches.setdefault(str(event.data["uniqueEventId"]), []).append(event)
    rows = {}
    for unique_event_id, of in matches.items():
        shopper = _greatest(_text(e.data.get("shopperId"), "shopperId") for e in of)
        rows[unique_event_id] = {
            "uniqueEventId": unique_event_id,
            "storeId": _greatest(e.data.get("storeId") for e in of),
            "shopperId": shopper,
            "timeOfOrigin": _least(instant(e.data.get("timeOfOrigin")) for e in of),
            "timeOfIssue": _least(instant(e.data.get("timeOfIssue")) for e in of),
            "receivedAt": _least(instant(e.data.get("receivedAt")) for e in of),
            "matched": shopper is not None,
        }
    return rows


def expected_occupancy(events: Iterable[Event]) -> list[dict[str, Any]]:
    stores: dict[Any, list[dict[str, Any]]] = {}
    for visit in expected_visits(events).values():
        stores.setdefault(visit["storeId"], []).append(visit)
    return [
        {
            "storeId": store,
            "occupancy": sum(v["occupancy"] for v in visits),
            "openSessions": sum(v["personsEntered"] > v["personsExited"] for v in visits),
            "sessions": len(visits),
        }
        for store, visits in sorted(stores.items(), key=lambda item: (item[0] is not None, item[0]))
    ]


async def differences(settings: LedgerSettings, events: list[Event]) -> list[str]:
    """Where the ledger `settings` names differs from the model of `events`; [] when it
    equals it. Read through a reader's ledger opened for the purpose, which prunes nothing
    and holds no connection from before a restart of its database."""
    async with open_ledger(settings, create=False) as ledger:
        found = await read_differences(ledger, events)
    if (count := await processed(settings)) != len(distinct(events)):
        found.append(f"processed: {count} != {len(distinct(events))}")
    return found


async def read_differences(ledger: Ledger, events: list[Event]) -> list[str]:
    """Where the ledger's reads (visits, tracking matches, occupancy) differ from the model."""
    found = []
    for session, visit in expected_visits(events).items():
        if (got := await ledger.visit(session)) != visit:
            found.append(f"visit {session}: {got} != {visit}")
    for unique_event_id, match in expected_tracking(events).items():
        if (got := await ledger.tracking(unique_event_id)) != match:
            found.append(f"tracking {unique_event_id}: {got} != {match}")
    if (stores := await ledger.occupancy()) != expected_occupancy(events):
        found.append(f"occupancy: {stores} != {expected_occupancy(events)}")
    return found
