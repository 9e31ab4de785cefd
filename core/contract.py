"""The wire contract: exchange, routing keys, the event envelope and AMQP headers.

Defined once here and imported by the gateway, the consumers and the tests, so a
change to what goes on the wire is a change to this module only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict

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
SPECVERSION: Final = "1.0"
HEADER_PREFIX: Final = "cloudEvents_"

Kind = Literal["entered", "exited", "tracking"]
KINDS: Final[tuple[Kind, ...]] = ("entered", "exited", "tracking")
EventType = Literal["com.aifi.customer.entered", "com.aifi.customer.exited", "com.aifi.tracking"]
EVENT_TYPES: Final[dict[Kind, EventType]] = {
    "entered": "com.aifi.customer.entered",
    "exited": "com.aifi.customer.exited",
    "tracking": "com.aifi.tracking",
}

# Headers that are not CloudEvents attributes but let a binding or a shovel
# filter without parsing the body.
STORE_ID_HEADER: Final = "aifi_store_id"
SESSION_ID_HEADER: Final = "aifi_session_id"
FINGERPRINT_HEADER: Final = "aifi_fingerprint"

# Headers of a quarantined (invalid) request.
INVALID_REASON_HEADER: Final = "aifi_invalid_reason"
INVALID_KIND_HEADER: Final = "aifi_invalid_kind"
TOKEN_NAME_HEADER: Final = "aifi_token_name"
RECEIVED_AT_HEADER: Final = "aifi_received_at"
REQUEST_CONTENT_TYPE_HEADER: Final = "aifi_request_content_type"

HeaderValue = str | int | None
Headers = dict[str, HeaderValue]


def routing_key(kind: str, store_id: int | str | None) -> str:
    """`{kind}.{storeId}`, with `unknown` standing in for a missing store id."""
    return f"{kind}.{'unknown' if store_id is None else store_id}"


def invalid_routing_key(kind: str) -> str:
    return f"invalid.{kind}"


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message bound for the exchange: what the spool stores and the relay publishes."""

    message_id: str
    routing_key: str
    body: bytes
    content_type: str
    timestamp_s: int
    headers: Headers = field(default_factory=dict)


def event_headers(event: dict[str, Any]) -> Headers:
    """AMQP headers mirroring the CloudEvents attributes, plus store, session and fingerprint."""
    data = event["data"]
    headers: Headers = {
        f"{HEADER_PREFIX}{name}": event[name]
        for name in ("specversion", "id", "source", "type", "time", "subject")
    }
    headers[STORE_ID_HEADER] = data.get("storeId")
    headers[SESSION_ID_HEADER] = data.get("sessionId")
    headers[FINGERPRINT_HEADER] = data["fingerprint"]
    return headers


def encode_event(event: dict[str, Any]) -> bytes:
    """The one place an event becomes bytes (`data.payload` may be an `orjson.Fragment`)."""
    return orjson.dumps(event)


def decode_event(body: bytes) -> dict[str, Any]:
    """Parse an event body, raising `ValueError` if it is not a CloudEvents event of ours."""
    event = orjson.loads(body)
    if not isinstance(event, dict) or event.get("specversion") != SPECVERSION:
        raise ValueError("not a CloudEvents 1.0 structured event")
    missing = [k for k in ("id", "type", "source", "data") if k not in event]
    if missing:
        raise ValueError(f"event lacks {', '.join(missing)}")
    if event["type"] not in EVENT_TYPES.values():
        raise ValueError(f"unknown event type {event['type']!r}")
    return event


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded event, as consumers see it."""

    id: str
    type: str
    source: str
    time: str | None
    subject: str | None
    data: dict[str, Any]

    @property
    def kind(self) -> Kind:
        kind: Kind = self.data["kind"]
        return kind

    @classmethod
    def from_body(cls, body: bytes) -> Event:
        """Raise `ValueError` when `body` is not one of our events."""
        event = decode_event(body)
        data = event["data"]
        if not isinstance(data, dict) or EVENT_TYPES.get(data.get("kind", "")) != event["type"]:
            raise ValueError("event data.kind is missing or does not match its type")
        return cls(
            id=str(event["id"]),
            type=event["type"],
            source=str(event["source"]),
            time=event.get("time"),
            subject=event.get("subject"),
            data=event["data"],
        )


class EventData(BaseModel):
    """`data` of every event: the normalized fields, and AiFi's body untouched in `payload`."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind
    storeId: int | None
    oasisApiStoreId: int | None
    aifiUniqueStoreId: str | None
    storeExternalId: str | None
    sessionId: str | None
    customerId: str | int | None
    customerRole: str | None
    shopperId: str | None
    groupSize: int | None
    uniqueEventId: str | None
    timeOfOrigin: str
    timeOfIssue: str
    receivedAt: str
    tokenName: str | None
    fingerprint: str
    payload: dict[str, Any]


class CloudEvent(BaseModel):
    """The body of every message on `aifi.events` (CloudEvents 1.0, structured mode)."""

    model_config = ConfigDict(extra="forbid")

    specversion: Literal["1.0"]
    id: str
    source: str
    type: EventType
    time: str
    subject: str | None
    datacontenttype: Literal["application/json"]
    data: EventData
