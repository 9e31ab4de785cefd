"""Unit tests of the wire contract (core.contract), and the agreement of its three readers.

The consumers' decoder, the JSON Schema the AsyncAPI document publishes and the
CloudEvents SDK are given the same table of envelopes: the first two must agree on
every row, and what they accept the SDK must accept too (our contract is a profile of
CloudEvents: stricter, never in conflict).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any, Final

import jsonschema
import orjson
import pytest
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat

from core import asyncapi, contract, mirror
from core.contract import Event, InvalidEvent

Envelope = dict[str, Any]
Change = Callable[[Envelope], None]
FINGERPRINT: Final = "5" * 64
TRACEPARENT: Final = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE: Final = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7,tenant@vendor=a b"


def valid() -> Envelope:
    """A complete envelope, as the gateway writes one (the agreement table changes it)."""
    return {
        "specversion": "1.0",
        "id": "0b7c6f0e-1d5e-4c55-9b1a-7b1f6c1d2e3f",
        "source": "/aifi/stores/42",
        "type": "com.aifi.customer.entered",
        "time": "2024-05-01T12:00:00Z",
        "subject": "s-1",
        "datacontenttype": "application/json",
        "data": {
            "kind": "entered",
            "storeId": 42,
            "oasisApiStoreId": 7,
            "aifiUniqueStoreId": "u-42",
            "timeOfOrigin": "2024-05-01T12:00:00Z",
            "timeOfIssue": "2024-05-01T12:00:01.500000Z",
            "receivedAt": "2024-05-01T12:00:02.123456Z",
            "tokenName": "aifi",
            "fingerprint": FINGERPRINT,
            "storeExternalId": "shop-42",
            "sessionId": "s-1",
            "customerId": "c-1",
            "customerRole": "customer",
            "shopperId": "p-1",
            "groupSize": 2,
            "uniqueEventId": None,
            "payload": {"sessionId": "s-1", "anything": [1, {"else": None}]},
        },
    }


def setting(*path: str, value: Any) -> Change:
    def change(envelope: Envelope) -> None:
        node = envelope
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def removing(*path: str) -> Change:
    def change(envelope: Envelope) -> None:
        node = envelope
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return change


def both(first: Change, then: Change) -> Change:
    def change(envelope: Envelope) -> None:
        first(envelope)
        then(envelope)

    return change


def kind(name: contract.Kind) -> Change:
    def change(envelope: Envelope) -> None:
        envelope["type"] = contract.EVENT_TYPES[name]
        envelope["data"]["kind"] = name

    return change


ATTRIBUTES: Final = (*contract.Context.model_fields, "data")
DATA_FIELDS: Final = tuple(contract.EventData.model_fields)
# (row id, the change to a valid envelope, whether it is still one of our events)
TABLE: Final[list[tuple[str, Change, bool]]] = [
    ("valid", lambda envelope: None, True),
    ("valid exited", kind("exited"), True),
    ("valid tracking", kind("tracking"), True),
    # Extension attributes (CloudEvents: lowercase a-z and 0-9; string, integer, boolean).
    ("extension string", setting("comexampleextension1", value="value"), True),
    ("extension integer", setting("partitionkey", value=3), True),
    ("extension integral float", setting("partitionkey", value=3.0), True),
    ("extension boolean", setting("sampled", value=True), True),
    ("extension long name", setting("a" * 40, value="x"), True),
    ("extension digits", setting("ext2", value=""), True),
    ("extension uppercase", setting("traceParent", value="x"), False),
    ("extension dash", setting("trace-parent", value="x"), False),
    ("extension underscore", setting("data_base64", value="x"), False),
    ("extension null", setting("ext", value=None), False),
    ("extension float", setting("ext", value=1.5), False),
    ("extension array", setting("ext", value=[1]), False),
    ("extension object", setting("ext", value={"a": 1}), False),
    ("extension beyond 32 bits", setting("ext", value=2**31), False),
    # The distributed-tracing extension (W3C Trace Context, version 00 as the gateway writes).
    ("traceparent", setting("traceparent", value=TRACEPARENT), True),
    (
        "traceparent and tracestate",
        both(setting("traceparent", value=TRACEPARENT), setting("tracestate", value=TRACESTATE)),
        True,
    ),
    ("traceparent unsampled", setting("traceparent", value=TRACEPARENT[:-2] + "00"), True),
    ("traceparent not hex", setting("traceparent", value=TRACEPARENT.replace("4bf", "4bg")), False),
    ("traceparent uppercase", setting("traceparent", value=TRACEPARENT.upper()), False),
    ("traceparent version 01", setting("traceparent", value="01" + TRACEPARENT[2:]), False),
    ("traceparent suffixed", setting("traceparent", value=TRACEPARENT + "-x"), False),
    ("traceparent short", setting("traceparent", value=TRACEPARENT[:-1]), False),
    (
        "traceparent zero trace id",
        setting("traceparent", value=f"00-{'0' * 32}-{'1' * 16}-01"),
        False,
    ),
    (
        "traceparent zero parent id",
        setting("traceparent", value=f"00-{'1' * 32}-{'0' * 16}-01"),
        False,
    ),
    ("traceparent null", setting("traceparent", value=None), False),
    ("traceparent integer", setting("traceparent", value=1), False),
    ("tracestate uppercase key", setting("tracestate", value="Congo=1"), False),
    ("tracestate no value", setting("tracestate", value="congo"), False),
    ("tracestate spaces", setting("tracestate", value="congo=1, rojo=2"), False),
    (
        "tracestate 32 members",
        setting("tracestate", value=",".join(f"k{i}=v" for i in range(32))),
        True,
    ),
    (
        "tracestate 33 members",
        setting("tracestate", value=",".join(f"k{i}=v" for i in range(33))),
        False,
    ),
    ("tracestate over 512", setting("tracestate", value=f"k={'v' * 255},l={'v' * 255},m=v"), False),
    ("tracestate null", setting("tracestate", value=None), False),
    # The kind/type rule.
    ("type entered, kind exited", setting("data", "kind", value="exited"), False),
    ("type tracking, kind entered", setting("type", value="com.aifi.tracking"), False),
    (
        "type exited, kind tracking",
        both(kind("exited"), setting("data", "kind", value="tracking")),
        False,
    ),
    ("unknown type", setting("type", value="com.aifi.checkout"), False),
    ("unknown kind", setting("data", "kind", value="left"), False),
    # Context attributes of the wrong type or value.
    ("specversion number", setting("specversion", value=1.0), False),
    ("specversion 0.3", setting("specversion", value="0.3"), False),
    ("integer id", setting("id", value=5), False),
    ("empty id", setting("id", value=""), False),
    ("integer source", setting("source", value=42), False),
    ("empty source", setting("source", value=""), False),
    ("integer type", setting("type", value=1), False),
    ("integer time", setting("time", value=1714564800), False),
    ("time not RFC 3339", setting("time", value="yesterday"), False),
    ("time without zone", setting("time", value="2024-05-01T12:00:00"), False),
    ("time with offset", setting("time", value="2024-05-01T14:00:00.25+02:00"), True),
    ("time with other digits", setting("time", value="2024-05-01T12:00:0\u0660Z"), False),
    ("null subject", setting("subject", value=None), False),
    ("empty subject", setting("subject", value=""), False),
    ("datacontenttype text/plain", setting("datacontenttype", value="text/plain"), False),
    ("data a string", setting("data", value="x"), False),
    ("data an array", setting("data", value=[]), False),
    # data fields of the wrong type or value.
    ("storeId a string", setting("data", "storeId", value="42"), False),
    ("storeId a boolean", setting("data", "storeId", value=True), False),
    ("storeId a fraction", setting("data", "storeId", value=4.5), False),
    ("storeId an integral float", setting("data", "storeId", value=42.0), True),
    ("storeId beyond 64 bits", setting("data", "storeId", value=2**63), False),
    ("storeId null", setting("data", "storeId", value=None), True),
    ("customerId an integer", setting("data", "customerId", value=991), True),
    ("customerId a fraction", setting("data", "customerId", value=1.5), False),
    ("groupSize a string", setting("data", "groupSize", value="2"), False),
    ("sessionId an integer", setting("data", "sessionId", value=1), False),
    ("fingerprint not sha256", setting("data", "fingerprint", value="abc"), False),
    ("receivedAt not a time", setting("data", "receivedAt", value="now"), False),
    ("payload an array", setting("data", "payload", value=[]), False),
    ("payload null", setting("data", "payload", value=None), False),
    ("unknown data field", setting("data", "extra", value=1), False),
    *((f"no {name}", removing(name), False) for name in ATTRIBUTES),
    *((f"no data.{name}", removing("data", name), False) for name in DATA_FIELDS),
]


def envelope_of(change: Change) -> Envelope:
    envelope = copy.deepcopy(valid())
    change(envelope)
    return envelope


def published_schema() -> jsonschema.Draft202012Validator:
    """The envelope's JSON Schema, as the AsyncAPI document publishes it for each kind."""
    document = asyncapi.document()
    schemas = {
        document["components"]["messages"][f"{kind}Event"]["payload"]["$ref"]
        for kind in contract.KINDS
    }
    (ref,) = schemas
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    whole = {**schema, "components": document["components"]}
    jsonschema.Draft202012Validator.check_schema(whole)
    return jsonschema.Draft202012Validator(whole)


SCHEMA: Final = published_schema()


def decoded(body: bytes) -> bool:
    try:
        Event.from_body(body)
    except InvalidEvent:
        return False
    return True


def cloudevents_accepts(body: bytes) -> bool:
    try:
        JSONFormat().read(None, body)
    except (BaseCloudEventException, ValueError, TypeError):
        return False
    return True


@pytest.mark.parametrize(
    ("change", "expected"), [row[1:] for row in TABLE], ids=[r[0] for r in TABLE]
)
def test_decoder_and_published_schema_agree(change: Change, expected: bool) -> None:
    envelope = envelope_of(change)
    body = orjson.dumps(envelope)
    assert decoded(body) is expected
    assert SCHEMA.is_valid(envelope) is expected
    if expected:
        assert cloudevents_accepts(body)


def test_the_table_covers_every_attribute_and_data_field() -> None:
    ids = {row[0] for row in TABLE}
    assert {f"no {name}" for name in ATTRIBUTES} <= ids
    assert {f"no data.{name}" for name in DATA_FIELDS} <= ids
    assert set(ATTRIBUTES) == {*contract.HEADER_ATTRIBUTES, "datacontenttype", "data"}


def test_extensions_reach_the_consumer() -> None:
    envelope = valid() | {"comexample": "x", "partitionkey": 3, "sampled": False}
    event = Event.from_body(orjson.dumps(envelope))
    assert event.extensions == {"comexample": "x", "partitionkey": 3, "sampled": False}
    assert Event.from_body(orjson.dumps(valid())).extensions == {}


def test_the_trace_reaches_the_consumer() -> None:
    envelope = valid() | {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    event = Event.from_body(orjson.dumps(envelope))
    assert (event.traceparent, event.tracestate) == (TRACEPARENT, TRACESTATE)
    assert event.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert event.extensions == {}
    untraced = Event.from_body(orjson.dumps(valid()))
    assert (untraced.traceparent, untraced.tracestate, untraced.trace_id) == (None, None, None)


def test_the_sdk_reads_the_trace_as_extension_attributes() -> None:
    envelope = valid() | {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    event = JSONFormat().read(None, orjson.dumps(envelope))
    assert event.get_extension("traceparent") == TRACEPARENT
    assert event.get_extension("tracestate") == TRACESTATE


def test_decode_gives_plain_data_with_the_payload() -> None:
    event = Event.from_body(orjson.dumps(valid()))
    assert (event.id, event.kind, event.time, event.subject) == (
        valid()["id"],
        "entered",
        "2024-05-01T12:00:00Z",
        "s-1",
    )
    assert event.data == valid()["data"]
    event.data["storeId"] = 0  # the consumer's own copy
    assert Event.from_body(orjson.dumps(valid())).data["storeId"] == 42


@pytest.mark.parametrize("body", [b"not json", b"", b"[]", b'"1.0"', b"null", b"{}"])
def test_decode_refuses_what_is_not_an_envelope(body: bytes) -> None:
    with pytest.raises(InvalidEvent):
        contract.decode(body)


def test_a_refusal_names_the_fields_without_their_values() -> None:
    envelope = envelope_of(setting("data", "storeId", value="secret-42"))
    del envelope["id"]
    with pytest.raises(InvalidEvent) as refused:
        contract.decode(orjson.dumps(envelope))
    assert "id: Field required" in str(refused.value)
    assert "data.storeId" in str(refused.value)
    assert "secret-42" not in str(refused.value)


def test_a_refusal_of_a_kind_that_is_not_its_type_says_so() -> None:
    with pytest.raises(InvalidEvent, match=r"data\.kind .exited. is not that of type"):
        contract.decode(orjson.dumps(envelope_of(setting("data", "kind", value="exited"))))


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


def test_forwarded_header() -> None:
    assert contract.forwarded_header("X-Request-Id") == "aifi_http_x-request-id"


def parts(envelope: Envelope) -> tuple[contract.ContextFields, contract.NormalizedFields, bytes]:
    """The plain forms the gateway builds of `envelope` (checked with the models' own types)."""
    attributes = {k: v for k, v in envelope.items() if k != "data"}
    data = {k: v for k, v in envelope["data"].items() if k != "payload"}
    payload = orjson.dumps(envelope["data"]["payload"])
    context = contract.Context(**attributes)
    return context.model_dump(), contract.Normalized(**data).model_dump(), payload  # type: ignore[return-value]


def test_a_message_s_body_decodes_to_the_envelope() -> None:
    body = contract.message(*parts(valid()), 1_700_000_000, {}).body
    assert orjson.loads(body) == valid()
    assert list(orjson.loads(body)) == list(valid())
    assert contract.decode(body).data.payload == valid()["data"]["payload"]


def test_the_trace_rides_in_the_body_only() -> None:
    context, data, payload = parts(valid())
    trace: contract.TraceFields = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    out = contract.message(context, data, payload, 1_700_000_000, {}, trace)
    assert orjson.loads(out.body) == valid() | trace
    assert list(orjson.loads(out.body))[-3:] == ["traceparent", "tracestate", "data"]
    assert out.headers == contract.message(context, data, payload, 1_700_000_000, {}).headers
    assert contract.decode(out.body).traceparent == TRACEPARENT
    assert contract.body_traceparent(out.body) == TRACEPARENT
    assert contract.trace_id(TRACEPARENT) == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b'{"traceparent": 1}', orjson.dumps(valid())]
)
def test_a_body_without_a_traceparent_has_none(body: bytes) -> None:
    assert contract.body_traceparent(body) is None


def test_a_message_routes_and_mirrors_the_attributes_in_headers() -> None:
    context, data, payload = parts(envelope_of(kind("tracking")))
    out = contract.message(context, data, payload, 1_700_000_000, {"aifi_http_x-a": "1"})
    assert (out.message_id, out.routing_key, out.timestamp_s) == (
        context["id"],
        "tracking.42",
        1_700_000_000,
    )
    assert out.content_type == contract.EVENT_CONTENT_TYPE
    assert out.body == contract.encode_fields(context, data, payload)
    assert out.headers == {
        "cloudEvents_specversion": "1.0",
        "cloudEvents_id": context["id"],
        "cloudEvents_source": "/aifi/stores/42",
        "cloudEvents_type": "com.aifi.tracking",
        "cloudEvents_time": "2024-05-01T12:00:00Z",
        "cloudEvents_subject": "s-1",
        contract.STORE_ID_HEADER: 42,
        contract.SESSION_ID_HEADER: "s-1",
        contract.FINGERPRINT_HEADER: FINGERPRINT,
        "aifi_http_x-a": "1",
    }


def test_the_plain_forms_mirror_the_envelope_in_full() -> None:
    """Names, order, types and optionality (`tests/test_mirror.py` breaks each in turn)."""
    forms = contract.plain_forms()
    assert [d for form in forms for d in mirror.differences(*form)] == []
    names = [name for _, _, mirrored in forms for name in mirrored]
    assert [*names[:9], "data"] == list(contract.CloudEvent.model_fields)
    assert [*names[9:], "payload"] == list(contract.EventData.model_fields)


def test_ids_are_formatted_as_the_uuid_module_formats_them() -> None:
    for store_id, unique in [(0, "string"), (-(2**63), "é😀"), (42, "")]:
        expected = uuid.uuid5(contract.TRACKING_NAMESPACE, f"{store_id}:{unique}")
        assert contract.tracking_event_id(store_id, unique) == str(expected)
    made = [uuid.UUID(contract.random_uuid()) for _ in range(100)]
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 for u in made)
    assert len(set(made)) == 100
