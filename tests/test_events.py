"""Unit tests of the normalization into CloudEvents (gateway.events)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from core import contract
from gateway import events
from gateway.events import Receipt
from gateway.models import Tracking, Transition

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RECEIVED = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
TOKEN_NAME = "aifi-primary"


def example(name: str, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return doc | changes


def odd(doc: dict[str, Any]) -> bytes:
    """A body as a sender might write it: odd whitespace, non-ASCII left unescaped."""
    text = json.dumps(doc, indent="\t", separators=(" ,", " :  "), ensure_ascii=False)
    return b"\n  " + text.encode() + b" \r\n"


def transition(kind: contract.Kind = "entered", **changes: Any) -> tuple[dict[str, Any], bytes]:
    doc = example("entered", **changes)
    raw = odd(doc)
    receipt = Receipt(raw, TOKEN_NAME, RECEIVED)
    return events.from_transition(Transition.model_validate(doc), kind, receipt), raw


def tracking(**changes: Any) -> tuple[dict[str, Any], bytes]:
    doc = example("tracking", **changes)
    raw = odd(doc)
    return events.from_tracking(Tracking.model_validate(doc), Receipt(raw, None, RECEIVED)), raw


STORE = {"oasisApiStoreId": 4411, "aifiUniqueStoreId": "u-store-17"}


@pytest.mark.parametrize("kind", ["entered", "exited"])
def test_transition_data_is_normalized(kind: contract.Kind) -> None:
    session = example("entered")["session"] | {"sessionId": "s-nested", "groupSize": 3}
    event, raw = transition(
        kind,
        storeId=17,
        store=STORE,
        storeExternalId="shop-17",
        session=session,
        sessionId="s-top",
        customer={"id": 991, "role": "employee"},
        shopperId="",
        shopper={"shopperId": "sh-5"},
        timeOfOrigin="2024-01-02T03:04:05+02:00",
        timeOfIssue="2024-01-02T01:04:06.5Z",
    )
    data = event["data"]
    assert {k: v for k, v in data.items() if k != "payload"} == {
        "kind": kind,
        "storeId": 17,
        "oasisApiStoreId": 4411,
        "aifiUniqueStoreId": "u-store-17",
        "storeExternalId": "shop-17",
        "sessionId": "s-nested",
        "customerId": 991,
        "customerRole": "employee",
        "shopperId": "sh-5",
        "groupSize": 3,
        "uniqueEventId": None,
        "timeOfOrigin": "2024-01-02T01:04:05Z",
        "timeOfIssue": "2024-01-02T01:04:06.500000Z",
        "receivedAt": "2024-05-06T07:08:09.123456Z",
        "tokenName": TOKEN_NAME,
        "fingerprint": hashlib.sha256(raw).hexdigest(),
    }
    assert event["type"] == contract.EVENT_TYPES[kind]
    assert (event["specversion"], event["source"]) == ("1.0", "/aifi/stores/17")
    assert (event["subject"], event["time"]) == ("s-nested", "2024-01-02T01:04:05Z")
    assert event["datacontenttype"] == "application/json"


def test_transition_with_null_session_and_store_external_id() -> None:
    event, _ = transition(session=None, storeExternalId=None, sessionToken="legacy", sessionId=None)
    data = event["data"]
    assert (data["sessionId"], data["groupSize"], data["storeExternalId"]) == ("legacy", None, None)
    assert event["subject"] == "legacy"


def test_tracking_data_is_normalized() -> None:
    event, raw = tracking(
        storeId=23,
        store=STORE,
        shopperId=None,
        uniqueEventId="frame-77",
        timeOfOrigin="2024-03-01T10:00:00",
        timeOfIssue="2024-03-01T10:00:01-05:00",
    )
    data = event["data"]
    assert {k: v for k, v in data.items() if k != "payload"} == {
        "kind": "tracking",
        "storeId": 23,
        "oasisApiStoreId": 4411,
        "aifiUniqueStoreId": "u-store-17",
        "storeExternalId": None,
        "sessionId": None,
        "customerId": None,
        "customerRole": None,
        "shopperId": None,
        "groupSize": None,
        "uniqueEventId": "frame-77",
        "timeOfOrigin": "2024-03-01T10:00:00Z",
        "timeOfIssue": "2024-03-01T15:00:01Z",
        "receivedAt": "2024-05-06T07:08:09.123456Z",
        "tokenName": None,
        "fingerprint": hashlib.sha256(raw).hexdigest(),
    }
    assert (event["type"], event["subject"]) == (contract.EVENT_TYPES["tracking"], "frame-77")


def test_tracking_keeps_an_undeclared_store_external_id() -> None:
    assert tracking(storeExternalId="shop-3")[0]["data"]["storeExternalId"] == "shop-3"


@pytest.mark.parametrize("build", [transition, tracking])
def test_payload_is_the_raw_body_byte_for_byte(
    build: Callable[..., tuple[dict[str, Any], bytes]],
) -> None:
    event, raw = build(customerNote="café  \t ünïcode")
    encoded = contract.encode_event(event)
    assert raw in encoded
    assert b'"payload":' + raw in encoded
    assert orjson.loads(encoded)["data"]["payload"] == orjson.loads(raw)


def test_tracking_id_is_deterministic_per_store_and_unique_event_id() -> None:
    first, _ = tracking(storeId=5, uniqueEventId="e-1")
    again, _ = tracking(storeId=5, uniqueEventId="e-1", timeOfIssue="2030-01-01T00:00:00Z")
    other_store, _ = tracking(storeId=6, uniqueEventId="e-1")
    other_event, _ = tracking(storeId=5, uniqueEventId="e-2")
    assert first["id"] == again["id"] == events.tracking_event_id(5, "e-1")
    assert uuid.UUID(first["id"]).version == 5
    assert len({first["id"], other_store["id"], other_event["id"]}) == 3


def test_transition_ids_are_unique_per_call_and_twins_share_the_fingerprint() -> None:
    doc = example("left")
    raw = odd(doc)
    model = Transition.model_validate(doc)
    twins = [
        events.from_transition(model, "exited", Receipt(raw, TOKEN_NAME, RECEIVED))
        for _ in range(3)
    ]
    assert len({e["id"] for e in twins}) == 3
    assert all(uuid.UUID(e["id"]).version == 4 for e in twins)
    assert {e["data"]["fingerprint"] for e in twins} == {hashlib.sha256(raw).hexdigest()}


def test_to_outbound() -> None:
    event, raw = transition(storeId=42)
    out = events.to_outbound(event, RECEIVED, {"aifi_http_x-request-id": "r-1"})
    assert out.message_id == event["id"]
    assert out.routing_key == "entered.42"
    assert out.content_type == contract.EVENT_CONTENT_TYPE == "application/cloudevents+json"
    assert out.timestamp_s == int(RECEIVED.timestamp())
    assert out.headers == contract.event_headers(event) | {"aifi_http_x-request-id": "r-1"}
    assert out.headers["cloudEvents_id"] == event["id"]
    assert out.headers[contract.FINGERPRINT_HEADER] == hashlib.sha256(raw).hexdigest()
    assert contract.decode_event(out.body)["id"] == event["id"]
    assert raw in out.body


def test_to_outbound_without_extra_headers() -> None:
    event, _ = tracking(storeId=8)
    out = events.to_outbound(event, RECEIVED)
    assert (out.routing_key, out.headers) == ("tracking.8", contract.event_headers(event))


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/plain", "text/plain"),
        ("", "application/octet-stream"),
    ],
)
def test_quarantined_keeps_the_raw_body_and_explains(content_type: str, expected: str) -> None:
    secret = "s3cr3t-bearer-value"
    raw = b'{"storeId": "not-an-int" ,\n}'
    receipt = Receipt(raw, TOKEN_NAME, RECEIVED)
    out = events.quarantined("entered", "x" * 1500, receipt, content_type)
    assert (out.body, out.routing_key, out.content_type) == (raw, "invalid.entered", expected)
    assert out.timestamp_s == int(RECEIVED.timestamp())
    assert out.headers == {
        contract.INVALID_KIND_HEADER: "entered",
        contract.INVALID_REASON_HEADER: "x" * 1000,
        contract.TOKEN_NAME_HEADER: TOKEN_NAME,
        contract.RECEIVED_AT_HEADER: "2024-05-06T07:08:09.123456Z",
        contract.FINGERPRINT_HEADER: hashlib.sha256(raw).hexdigest(),
        contract.REQUEST_CONTENT_TYPE_HEADER: content_type,
    }
    assert all(secret not in str(v) for v in out.headers.values())
    assert events.quarantined("entered", "r", receipt, "").message_id != out.message_id
