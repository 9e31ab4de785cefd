"""The wire contract: exchange, queues, routing keys, the event envelope and AMQP headers.

Defined once here and imported by the gateway, the consumers and the tests, so a
change to what goes on the wire is a change to this module only. The envelope is the
pydantic model `CloudEvent`: the consumers decode with it (`decode`, `Event.from_body`)
and the AsyncAPI document publishes its JSON Schema. The gateway builds no model per
event: it writes plain dict literals typed by `ContextFields`, `TraceFields` and
`NormalizedFields`, which mirror the models' fields and are checked against them in
full (names, order, types, optionality) when this module is imported.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, TypedDict

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from core import mirror
from core.validation import reasons

EXCHANGE: Final = "aifi.events"
UNROUTED_EXCHANGE: Final = "aifi.unrouted"
UNROUTED_QUEUE: Final = "aifi.unrouted"

# The workers' exchanges and queues (consumers.topology declares them): a retry goes
# through the delay exchange, back through the redeliver one; dead letters through dead.
DELAY_EXCHANGE: Final = "aifi.delay"
REDELIVER_EXCHANGE: Final = "aifi.redeliver"
DEAD_EXCHANGE: Final = "aifi.dead"


def queue_name(consumer: str) -> str:
    return f"aifi.{consumer}"


def dead_queue_name(consumer: str) -> str:
    return f"aifi.{consumer}.dead"


def delay_queue_name(consumer: str, delay_ms: int) -> str:
    return f"aifi.{consumer}.retry.{delay_ms}"


EVENT_CONTENT_TYPE: Final = "application/cloudevents+json"
DATA_CONTENT_TYPE: Final = "application/json"
SPECVERSION: Final = "1.0"

Kind = Literal["entered", "exited", "tracking"]
KINDS: Final[tuple[Kind, ...]] = ("entered", "exited", "tracking")
EventType = Literal["com.aifi.customer.entered", "com.aifi.customer.exited", "com.aifi.tracking"]
# The rule that ties `data.kind` to `type`: `CloudEvent` enforces it, and its JSON Schema says it.
EVENT_TYPES: Final[dict[Kind, EventType]] = {
    "entered": "com.aifi.customer.entered",
    "exited": "com.aifi.customer.exited",
    "tracking": "com.aifi.tracking",
}

# The CloudEvents context attributes every message repeats as AMQP headers (with the
# prefix), so that a binding or a shovel can filter without parsing the body; the first
# four are the ones CloudEvents requires.
HEADER_PREFIX: Final = "cloudEvents_"
HEADER_ATTRIBUTES: Final = ("specversion", "id", "source", "type", "time", "subject")
REQUIRED_ATTRIBUTES: Final = HEADER_ATTRIBUTES[:4]

# The CloudEvents distributed-tracing extension (W3C Trace Context): every event the
# gateway writes carries `traceparent` (version 00, as written), and `tracestate` when
# the webhook brought one. Absent from events written before it, so optional to readers.
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
# Neither id may be all zeros (W3C: invalid).
TRACEPARENT_PATTERN: Final = r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$"
# W3C: `key=value` list members, at most 32; the gateway writes them comma-separated
# without spaces, and keeps no more than the 512 characters every vendor must propagate.
_TRACESTATE_KEY: Final = (
    r"(?:[a-z][a-z0-9_*/-]{0,255}|[a-z0-9][a-z0-9_*/-]{0,240}@[a-z][a-z0-9_*/-]{0,13})"
)
_TRACESTATE_VALUE: Final = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
TRACESTATE_MEMBER: Final = f"{_TRACESTATE_KEY}={_TRACESTATE_VALUE}"
TRACESTATE_MAX_MEMBERS: Final = 32
TRACESTATE_MAX_CHARS: Final = 512
TRACESTATE_PATTERN: Final = f"^{TRACESTATE_MEMBER}(,{TRACESTATE_MEMBER}){{0,31}}$"
# Headers that are not CloudEvents attributes but let a binding or a shovel
# filter without parsing the body.
STORE_ID_HEADER: Final = "aifi_store_id"
SESSION_ID_HEADER: Final = "aifi_session_id"
FINGERPRINT_HEADER: Final = "aifi_fingerprint"
# An HTTP header listed in `http.forward_headers` rides as `aifi_http_<name, lowercased>`.
FORWARDED_HEADER_PREFIX: Final = "aifi_http_"

# Headers of a quarantined (invalid) request.
INVALID_REASON_HEADER: Final = "aifi_invalid_reason"
INVALID_KIND_HEADER: Final = "aifi_invalid_kind"
TOKEN_NAME_HEADER: Final = "aifi_token_name"
RECEIVED_AT_HEADER: Final = "aifi_received_at"
REQUEST_CONTENT_TYPE_HEADER: Final = "aifi_request_content_type"

# Headers a worker adds to the copy of an event it retries or dead-letters.
ATTEMPTS_HEADER: Final = "aifi_attempts"  # attempts that failed so far
REASON_HEADER: Final = "aifi_reason"  # why the last one failed
FAILED_AT_HEADER: Final = "aifi_failed_at"  # when, RFC 3339 UTC
REPLAYS_HEADER: Final = "aifi_replays"  # times moved back from the dead-letter queue

HeaderValue = str | int | None
Headers = dict[str, HeaderValue]


def routing_key(kind: str, store_id: int | str | None) -> str:
    """`{kind}.{storeId}`, with `unknown` standing in for a missing store id."""
    return f"{kind}.{'unknown' if store_id is None else store_id}"


def invalid_routing_key(kind: str) -> str:
    return f"invalid.{kind}"


# Fixed namespace so that a tracking event's id is the same on every machine
# and every redelivery: uuid5(namespace, "storeId:uniqueEventId").
TRACKING_NAMESPACE: Final = uuid.UUID("4f1c7d0e-3b5a-5c1e-9a8e-6a1f0b2c3d4e")


def tracking_event_id(store_id: int, unique_event_id: str) -> str:
    """`str(uuid.uuid5(TRACKING_NAMESPACE, "storeId:uniqueEventId"))`, computed as uuid5
    does without building the UUID object (a third of the cost)."""
    name = f"{store_id}:{unique_event_id}".encode()
    digest = int.from_bytes(hashlib.sha1(_TRACKING_NAMESPACE_BYTES + name).digest()[:16])
    return uuid_text(digest & _VERSION_CLEAR | _VERSION_5)


_TRACKING_NAMESPACE_BYTES: Final = TRACKING_NAMESPACE.bytes
# The version nibble and the variant bits of a UUID as a 128-bit integer (RFC 9562).
_VERSION_CLEAR: Final = ~(0xF000 << 64 | 0xC000 << 48) & (1 << 128) - 1
_VERSION_5: Final = 0x5000 << 64 | 0x8000 << 48
VERSION_4: Final = 0x4000 << 64 | 0x8000 << 48


def uuid_text(value: int) -> str:
    """A 128-bit integer as `str(uuid.UUID(int=value))` writes it."""
    hexed = value.to_bytes(16).hex()
    return f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"


def random_uuid() -> str:
    """A random (version 4) UUID, as `str(uuid.uuid4())` writes it."""
    return uuid_text(int.from_bytes(os.urandom(16)) & _VERSION_CLEAR | VERSION_4)


def forwarded_header(name: str) -> str:
    """The AMQP header that carries the HTTP header `name`."""
    return f"{FORWARDED_HEADER_PREFIX}{name.lower()}"


def _integral(value: object) -> object:
    # JSON Schema counts 1.0 as an integer; so does the decoder (and nothing else but ints).
    return int(value) if isinstance(value, float) and value.is_integer() else value


# What AMQP headers carry (a signed 64-bit integer), and CloudEvents' Integer (32 bits).
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1), BeforeValidator(_integral)]
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1), BeforeValidator(_integral)]
NonEmpty = Annotated[str, Field(min_length=1)]
# RFC 3339, as CloudEvents' Timestamp; the gateway writes UTC with a `Z`. ASCII digits
# spelled out: `\d` is Unicode in Python and Rust, ASCII in the ECMA-262 regexes of JSON Schema.
RFC3339: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
)
Timestamp = Annotated[str, Field(pattern=RFC3339)]
SHA256_HEX: Final = r"^[0-9a-f]{64}$"

# CloudEvents extension attributes (tracing, partitioning, ...) that a relay may add:
# names of lowercase ASCII letters and digits (CloudEvents recommends at most 20 of
# them), values of its JSON types: string, 32-bit integer, boolean.
EXTENSION_NAME: Final = "^[a-z0-9]+$"
ExtensionValue = str | Int32 | bool
_EXTENSION_NAME = re.compile(EXTENSION_NAME)
# Optional, but never null (CloudEvents has no null attribute): the schema says string only.
Traceparent = Annotated[
    str | None,
    Field(pattern=TRACEPARENT_PATTERN),
    WithJsonSchema({"type": "string", "pattern": TRACEPARENT_PATTERN}),
]
Tracestate = Annotated[
    str | None,
    Field(pattern=TRACESTATE_PATTERN, max_length=TRACESTATE_MAX_CHARS),
    WithJsonSchema(
        {"type": "string", "pattern": TRACESTATE_PATTERN, "maxLength": TRACESTATE_MAX_CHARS}
    ),
]


class Normalized(BaseModel):
    """`data` of an event but its payload: AiFi's call, normalized. Fields in wire order."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kind: Kind
    storeId: Int64 | None
    oasisApiStoreId: Int64 | None
    aifiUniqueStoreId: str | None
    timeOfOrigin: Timestamp
    timeOfIssue: Timestamp
    receivedAt: Timestamp
    tokenName: str | None
    fingerprint: Annotated[str, Field(pattern=SHA256_HEX)]
    storeExternalId: str | None
    sessionId: str | None
    customerId: str | Int64 | None
    customerRole: str | None
    shopperId: str | None
    groupSize: Int64 | None
    uniqueEventId: str | None


class EventData(Normalized):
    """`data` of every event: the normalized fields, and AiFi's body untouched in `payload`."""

    payload: dict[str, Any]


class Context(BaseModel):
    """The CloudEvents context attributes of an event, in wire order."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    specversion: Literal["1.0"]
    id: NonEmpty
    source: NonEmpty
    type: EventType
    time: Timestamp
    subject: NonEmpty
    datacontenttype: Literal["application/json"]


def _schema_rules(schema: dict[str, Any]) -> None:
    """What `CloudEvent`'s validator checks, in JSON Schema: extension names, kind and type."""
    schema["propertyNames"] = {"pattern": EXTENSION_NAME}
    for name in (TRACEPARENT, TRACESTATE):
        schema["properties"][name].pop("default", None)
    schema["allOf"] = [
        {
            "if": {"properties": {"type": {"const": event_type}}, "required": ["type"]},
            "then": {"properties": {"data": {"properties": {"kind": {"const": kind}}}}},
        }
        for kind, event_type in EVENT_TYPES.items()
    ]


class CloudEvent(Context):
    """The body of every message on `aifi.events` (CloudEvents 1.0, structured mode).

    `traceparent` and `tracestate` are the distributed-tracing extension; any other member
    is a CloudEvents extension attribute (`model_extra`).
    """

    # Python's regexes, as JSON Schema's: the Rust engine has no look-ahead (all-zero ids).
    model_config = ConfigDict(
        extra="allow", json_schema_extra=_schema_rules, regex_engine="python-re"
    )
    __pydantic_extra__: dict[str, ExtensionValue]

    traceparent: Traceparent = None
    tracestate: Tracestate = None
    data: EventData

    @field_validator(TRACEPARENT, TRACESTATE, mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("an attribute is a string, or absent; never null")
        return value

    @model_validator(mode="after")
    def _follows_the_rules(self) -> CloudEvent:
        if EVENT_TYPES[self.data.kind] != self.type:
            raise ValueError(f"data.kind {self.data.kind!r} is not that of type {self.type!r}")
        names = [name for name in self.model_extra or () if not _EXTENSION_NAME.fullmatch(name)]
        if names:
            raise ValueError(f"not an extension attribute name: {', '.join(names)}")
        return self


class InvalidEvent(ValueError):
    """A body that is not one of our events; the message says why, without its content."""


def decode(body: bytes) -> CloudEvent:
    """The event in `body`; `InvalidEvent` if it is not one of ours."""
    try:
        return CloudEvent.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidEvent(reasons(exc)) from None


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message bound for the exchange: what the spool stores and the relay publishes."""

    message_id: str
    routing_key: str
    body: bytes
    content_type: str
    timestamp_s: int
    headers: Headers = field(default_factory=dict)


class ContextFields(TypedDict):
    """`Context`'s fields as a plain dict, in wire order: what the gateway builds per event
    (a model's `model_construct` cost more than the rest of the message together). It
    mirrors the model, checked at import (`plain_forms`)."""

    specversion: Literal["1.0"]
    id: str
    source: str
    type: EventType
    time: str
    subject: str
    datacontenttype: Literal["application/json"]


class TraceFields(TypedDict, total=False):
    """`CloudEvent`'s distributed-tracing attributes as a plain dict (`traceparent` always,
    from the gateway): absent where the model has None."""

    traceparent: str
    tracestate: str


NO_TRACE: Final[TraceFields] = {}


class NormalizedFields(TypedDict):
    """`Normalized`'s fields as a plain dict, in wire order (`data` but its payload)."""

    kind: Kind
    storeId: int | None
    oasisApiStoreId: int | None
    aifiUniqueStoreId: str | None
    timeOfOrigin: str
    timeOfIssue: str
    receivedAt: str
    tokenName: str | None
    fingerprint: str
    storeExternalId: str | None
    sessionId: str | None
    customerId: str | int | None
    customerRole: str | None
    shopperId: str | None
    groupSize: int | None
    uniqueEventId: str | None


_SPECVERSION_HEADER: Final = f"{HEADER_PREFIX}specversion"
_ID_HEADER: Final = f"{HEADER_PREFIX}id"
_SOURCE_HEADER: Final = f"{HEADER_PREFIX}source"
_TYPE_HEADER: Final = f"{HEADER_PREFIX}type"
_TIME_HEADER: Final = f"{HEADER_PREFIX}time"
_SUBJECT_HEADER: Final = f"{HEADER_PREFIX}subject"


def mirrored_headers(context: ContextFields, data: NormalizedFields, extra: Headers) -> Headers:
    """AMQP headers mirroring the CloudEvents attributes (HEADER_ATTRIBUTES), plus store,
    session and fingerprint, then `extra`."""
    return {
        _SPECVERSION_HEADER: context["specversion"],
        _ID_HEADER: context["id"],
        _SOURCE_HEADER: context["source"],
        _TYPE_HEADER: context["type"],
        _TIME_HEADER: context["time"],
        _SUBJECT_HEADER: context["subject"],
        STORE_ID_HEADER: data["storeId"],
        SESSION_ID_HEADER: data["sessionId"],
        FINGERPRINT_HEADER: data["fingerprint"],
        **extra,
    }


def fields(model: BaseModel) -> dict[str, Any]:
    """A model's fields, in declaration order: its `__dict__`, where pydantic keeps them
    (`dict(model)` walks a generator, several times slower on this path)."""
    return dict(vars(model))


def encode_fields(
    context: ContextFields, data: NormalizedFields, payload: bytes, trace: TraceFields = NO_TRACE
) -> bytes:
    """The event's body. `payload` (a JSON object) is spliced in as it is: no second
    serialization, and not one byte of it changed."""
    body = {**context, **trace, "data": {**data, "payload": orjson.Fragment(payload)}}
    return orjson.dumps(body)


def message(
    context: ContextFields,
    data: NormalizedFields,
    payload: bytes,
    timestamp_s: int,
    headers: Headers,
    trace: TraceFields = NO_TRACE,
) -> Outbound:
    """The message of one event: body, routing key and headers (then `headers`), in one pass."""
    return Outbound(
        message_id=context["id"],
        routing_key=routing_key(data["kind"], data["storeId"]),
        body=encode_fields(context, data, payload, trace),
        content_type=EVENT_CONTENT_TYPE,
        timestamp_s=timestamp_s,
        headers=mirrored_headers(context, data, headers),
    )


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded event, as consumers see it (`data` as plain JSON, payload included)."""

    id: str
    type: str
    source: str
    time: str | None
    subject: str | None
    data: dict[str, Any]
    extensions: dict[str, ExtensionValue] = field(default_factory=dict)
    traceparent: str | None = None
    tracestate: str | None = None

    @property
    def kind(self) -> Kind:
        kind: Kind = self.data["kind"]
        return kind

    @property
    def trace_id(self) -> str | None:
        """The W3C trace id of the event's trace, for logs; None for an event without one."""
        return trace_id(self.traceparent)

    @classmethod
    def from_body(cls, body: bytes) -> Event:
        """Raise `InvalidEvent` (a `ValueError`) when `body` is not one of our events."""
        event = decode(body)
        return cls(
            id=event.id,
            type=event.type,
            source=event.source,
            time=event.time,
            subject=event.subject,
            data=fields(event.data),
            extensions=dict(event.model_extra or {}),
            traceparent=event.traceparent,
            tracestate=event.tracestate,
        )


def trace_id(traceparent: str | None) -> str | None:
    """The trace id in a (valid) `traceparent`: what logs show to find the trace."""
    return traceparent[3:35] if traceparent else None


def body_traceparent(body: bytes) -> str | None:
    """The `traceparent` of a message's body, if it is an event that has one (never raises:
    for logs and spans, which must not fail on a body that is no event)."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    value = event.get(TRACEPARENT) if isinstance(event, dict) else None
    return value if isinstance(value, str) else None


def plain_forms() -> list[tuple[type, type[BaseModel], list[str]]]:
    """Each plain form, the model and the fields of it that it mirrors, in the order
    `encode_fields` writes them: context, trace, `data` (the normalized fields, `payload`)."""
    envelope, data = list(CloudEvent.model_fields), list(EventData.model_fields)
    split = len(Context.model_fields)
    return [
        (ContextFields, CloudEvent, envelope[:split]),
        (TraceFields, CloudEvent, envelope[split:-1]),
        (NormalizedFields, EventData, data[:-1]),
    ]


def _check_plain_forms() -> None:
    # Once per process, at import: no build runs with a plain form the decoder would refuse.
    if differences := [d for form in plain_forms() for d in mirror.differences(*form)]:
        raise TypeError("the plain forms do not mirror the envelope: " + "; ".join(differences))


_check_plain_forms()
