"""Unit tests of the normalization into CloudEvents (gateway.normalize)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
import pytest

from core import contract
from core.contract import Outbound
from gateway import normalize
from gateway.normalize import Receipt

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RECEIVED = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
TOKEN_NAME = "aifi-primary"
FORWARDED: Final[contract.Headers] = {"aifi_http_x-request-id": "r-1"}


def example(name: str, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return doc | changes


def odd(doc: dict[str, Any]) -> bytes:
    """A body as a sender might write it: odd whitespace, non-ASCII left unescaped."""
    text = json.dumps(doc, indent="\t", separators=(" ,", " :  "), ensure_ascii=False)
    return b"\n  " + text.encode() + b" \r\n"


def outbound(
    normalizer: normalize.Normalizer[Any], doc: dict[str, Any], token_name: str | None = TOKEN_NAME
) -> tuple[Outbound, bytes]:
    raw = odd(doc)
    receipt = Receipt(raw, token_name, RECEIVED, FORWARDED)
    return normalizer.build(normalizer.model.model_validate(doc), receipt), raw


def transition(kind: contract.Kind = "entered", **changes: Any) -> tuple[dict[str, Any], bytes]:
    normalizer = normalize.EXITED if kind == "exited" else normalize.ENTERED
    out, raw = outbound(normalizer, example("entered", **changes))
    return orjson.loads(out.body), raw


def tracking(**changes: Any) -> tuple[dict[str, Any], bytes]:
    out, raw = outbound(normalize.TRACKING, example("tracking", **changes), token_name=None)
    return orjson.loads(out.body), raw


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


@pytest.mark.parametrize("normalizer", [normalize.ENTERED, normalize.TRACKING])
def test_payload_is_the_raw_body_byte_for_byte(normalizer: normalize.Normalizer[Any]) -> None:
    name = "tracking" if normalizer is normalize.TRACKING else "entered"
    out, raw = outbound(normalizer, example(name, customerNote="café  \t ünïcode"))
    assert raw in out.body
    assert b'"payload":' + raw + b"}}" == out.body[-len(raw) - 12 :]
    assert orjson.loads(out.body)["data"]["payload"] == orjson.loads(raw)


def test_tracking_id_is_deterministic_per_store_and_unique_event_id() -> None:
    first, _ = tracking(storeId=5, uniqueEventId="e-1")
    again, _ = tracking(storeId=5, uniqueEventId="e-1", timeOfIssue="2030-01-01T00:00:00Z")
    other_store, _ = tracking(storeId=6, uniqueEventId="e-1")
    other_event, _ = tracking(storeId=5, uniqueEventId="e-2")
    assert first["id"] == again["id"] == contract.tracking_event_id(5, "e-1")
    assert uuid.UUID(first["id"]).version == 5
    assert len({first["id"], other_store["id"], other_event["id"]}) == 3


def test_transition_ids_are_unique_per_call_and_twins_share_the_fingerprint() -> None:
    twins = [outbound(normalize.EXITED, example("left")) for _ in range(3)]
    assert len({out.message_id for out, _ in twins}) == 3
    assert all(uuid.UUID(out.message_id).version == 4 for out, _ in twins)
    fingerprints = {out.headers[contract.FINGERPRINT_HEADER] for out, _ in twins}
    assert fingerprints == {hashlib.sha256(twins[0][1]).hexdigest()}


@pytest.mark.parametrize("normalizer", [normalize.ENTERED, normalize.EXITED, normalize.TRACKING])
def test_the_message_is_one_valid_event_routed_and_mirrored_in_headers(
    normalizer: normalize.Normalizer[Any],
) -> None:
    name = {"entered": "entered", "exited": "left", "tracking": "tracking"}[normalizer.kind]
    out, raw = outbound(normalizer, example(name, storeId=42))
    event = contract.decode(out.body)
    assert (event.data.kind, event.type) == (normalizer.kind, contract.EVENT_TYPES[normalizer.kind])
    assert out.message_id == event.id
    assert out.routing_key == f"{normalizer.kind}.42"
    assert out.content_type == contract.EVENT_CONTENT_TYPE == "application/cloudevents+json"
    assert out.timestamp_s == int(RECEIVED.timestamp())
    assert (
        out.headers
        == {
            "cloudEvents_specversion": "1.0",
            "cloudEvents_id": event.id,
            "cloudEvents_source": "/aifi/stores/42",
            "cloudEvents_type": event.type,
            "cloudEvents_time": event.time,
            "cloudEvents_subject": event.subject,
            contract.STORE_ID_HEADER: 42,
            contract.SESSION_ID_HEADER: event.data.sessionId,
            contract.FINGERPRINT_HEADER: hashlib.sha256(raw).hexdigest(),
        }
        | FORWARDED
    )
    assert raw in out.body


# What the gateway published for AiFi's examples before the envelope had a typed
# definition, byte for byte: what goes on the wire must not change with the code.
GOLDEN_ID: Final = uuid.UUID("00000000-0000-4000-8000-000000000001")
GOLDEN_RECEIVED: Final = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
GOLDEN_DATA: Final = (
    '"oasisApiStoreId":0,"aifiUniqueStoreId":"string","timeOfOrigin":"2019-08-24T14:15:22Z",'
    '"timeOfIssue":"2019-08-24T14:15:22Z","receivedAt":"2024-05-06T07:08:09.123456Z",'
    '"tokenName":"aifi","fingerprint":"{fingerprint}",'
)
GOLDEN_SESSION: Final = "d3a00526-1864-4f6e-bb2d-46e3ab7fa780"
GOLDEN_TRANSITION: Final = (
    '{{"specversion":"1.0","id":"{id}","source":"/aifi/stores/0","type":"{type}",'
    '"time":"2019-08-24T14:15:22Z","subject":"' + GOLDEN_SESSION + '",'
    '"datacontenttype":"application/json","data":{{"kind":"{kind}","storeId":0,'
    + GOLDEN_DATA
    + '"storeExternalId":"string","sessionId":"'
    + GOLDEN_SESSION
    + '","customerId":"string",'
    '"customerRole":"customer","shopperId":"string","groupSize":0,"uniqueEventId":null,'
    '"payload":'
)
GOLDEN_TRACKING: Final = (
    '{{"specversion":"1.0","id":"{id}","source":"/aifi/stores/0","type":"com.aifi.tracking",'
    '"time":"2019-08-24T14:15:22Z","subject":"string","datacontenttype":"application/json",'
    '"data":{{"kind":"tracking","storeId":0,'
    + GOLDEN_DATA
    + '"storeExternalId":null,"sessionId":null,"customerId":null,"customerRole":null,'
    '"shopperId":"string","groupSize":null,"uniqueEventId":"string","payload":'
)


@pytest.mark.parametrize(
    ("normalizer", "name"),
    [(normalize.ENTERED, "entered"), (normalize.EXITED, "left"), (normalize.TRACKING, "tracking")],
)
def test_the_examples_envelopes_are_byte_for_byte_as_pinned(
    monkeypatch: pytest.MonkeyPatch, normalizer: normalize.Normalizer[Any], name: str
) -> None:
    monkeypatch.setattr(normalize, "new_event_id", lambda: str(GOLDEN_ID))
    raw = (EXAMPLES / f"{name}.json").read_bytes()
    receipt = Receipt(raw, "aifi", GOLDEN_RECEIVED, FORWARDED)
    out = normalizer.build(normalizer.model.model_validate_json(raw), receipt)
    kind = normalizer.kind
    event_id = contract.tracking_event_id(0, "string") if kind == "tracking" else str(GOLDEN_ID)
    pinned = GOLDEN_TRACKING if kind == "tracking" else GOLDEN_TRANSITION
    fingerprint = hashlib.sha256(raw).hexdigest()
    head = pinned.format(
        id=event_id, type=contract.EVENT_TYPES[kind], kind=kind, fingerprint=fingerprint
    )
    assert out.body == head.encode() + raw + b"}}"
    assert (out.message_id, out.routing_key, out.content_type, out.timestamp_s) == (
        event_id,
        f"{kind}.0",
        "application/cloudevents+json",
        1714979289,
    )
    assert list(out.headers.items()) == [
        ("cloudEvents_specversion", "1.0"),
        ("cloudEvents_id", event_id),
        ("cloudEvents_source", "/aifi/stores/0"),
        ("cloudEvents_type", contract.EVENT_TYPES[kind]),
        ("cloudEvents_time", "2019-08-24T14:15:22Z"),
        ("cloudEvents_subject", "string" if kind == "tracking" else GOLDEN_SESSION),
        ("aifi_store_id", 0),
        ("aifi_session_id", None if kind == "tracking" else GOLDEN_SESSION),
        ("aifi_fingerprint", fingerprint),
        ("aifi_http_x-request-id", "r-1"),
    ]


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
    out = normalize.quarantined("entered", "x" * 1500, receipt, content_type)
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
    assert normalize.quarantined("entered", "r", receipt, "").message_id != out.message_id
