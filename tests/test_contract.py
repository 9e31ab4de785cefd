"""Unit tests of the wire contract (core.contract)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from core import contract
from core.contract import Event
from gateway import events
from gateway.models import Tracking, Transition

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RECEIVED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def built(kind: contract.Kind) -> tuple[dict[str, Any], bytes]:
    """An event as the gateway builds it, from the documented example."""
    raw = (EXAMPLES / ("tracking.json" if kind == "tracking" else "left.json")).read_bytes()
    receipt = events.Receipt(raw, "aifi", RECEIVED)
    if kind == "tracking":
        return events.from_tracking(Tracking.model_validate_json(raw), receipt), raw
    return events.from_transition(Transition.model_validate_json(raw), kind, receipt), raw


def valid() -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/aifi/stores/1",
        "type": "com.aifi.tracking",
        "data": {"kind": "tracking"},
    }


@pytest.mark.parametrize(
    ("kind", "store_id", "expected"),
    [
        ("entered", None, "entered.unknown"),
        ("exited", 0, "exited.0"),
        ("tracking", 123, "tracking.123"),
        ("tracking", "77", "tracking.77"),
    ],
)
def test_routing_key(kind: str, store_id: int | str | None, expected: str) -> None:
    assert contract.routing_key(kind, store_id) == expected


def test_invalid_routing_key() -> None:
    assert contract.invalid_routing_key("left") == "invalid.left"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[]",
        b'"1.0"',
        b"null",
        orjson.dumps(valid() | {"specversion": "0.3"}),
        orjson.dumps(valid() | {"specversion": 1.0}),
        orjson.dumps({k: v for k, v in valid().items() if k != "specversion"}),
        orjson.dumps(valid() | {"type": "com.aifi.checkout"}),
        *(
            orjson.dumps({k: v for k, v in valid().items() if k != f})
            for f in ("id", "type", "source", "data")
        ),
    ],
)
def test_decode_event_rejects_what_is_not_one_of_our_events(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the documented contract is ValueError
        contract.decode_event(body)


def test_decode_event_names_every_missing_attribute() -> None:
    body = orjson.dumps({"specversion": "1.0", "type": "com.aifi.tracking"})
    with pytest.raises(ValueError, match="id, source, data"):
        contract.decode_event(body)


def test_decode_event_accepts_a_minimal_event() -> None:
    assert contract.decode_event(orjson.dumps(valid())) == valid()


@pytest.mark.parametrize("data", [[], "tracking", {}, {"kind": "left"}, {"kind": None}])
def test_event_from_body_requires_data_with_a_known_kind(data: object) -> None:
    with pytest.raises(ValueError, match="kind"):
        Event.from_body(orjson.dumps(valid() | {"data": data}))


@pytest.mark.parametrize("kind", contract.KINDS)
def test_event_round_trip_from_a_gateway_event(kind: contract.Kind) -> None:
    event, raw = built(kind)
    decoded = Event.from_body(contract.encode_event(event))
    assert decoded.kind == kind
    assert (decoded.id, decoded.type, decoded.source) == (
        event["id"],
        event["type"],
        event["source"],
    )
    assert (decoded.time, decoded.subject) == (event["time"], event["subject"])
    assert decoded.type == contract.EVENT_TYPES[kind]
    assert decoded.data["payload"] == orjson.loads(raw)
    expected = {k: v for k, v in event["data"].items() if k != "payload"}
    assert {k: v for k, v in decoded.data.items() if k != "payload"} == expected


@pytest.mark.parametrize("kind", contract.KINDS)
def test_event_headers_mirror_cloudevents_attributes(kind: contract.Kind) -> None:
    event, _ = built(kind)
    headers = contract.event_headers(event)
    attributes = ("specversion", "id", "source", "type", "time", "subject")
    for name in attributes:
        assert headers[f"cloudEvents_{name}"] == event[name]
    assert headers[contract.STORE_ID_HEADER] == event["data"]["storeId"]
    assert headers[contract.SESSION_ID_HEADER] == event["data"]["sessionId"]
    assert headers[contract.FINGERPRINT_HEADER] == event["data"]["fingerprint"]
    assert len(headers) == len(attributes) + 3


def test_encode_event_is_plain_json_without_fragments() -> None:
    event = valid() | {"data": {"kind": "tracking", "n": 1}}
    assert json.loads(contract.encode_event(event)) == event
