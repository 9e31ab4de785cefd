"""Normalization of a validated AiFi webhook into one CloudEvents envelope."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson

from core import contract
from core.contract import Kind, Outbound
from core.times import iso
from gateway.models import Tracking, Transition

# Fixed namespace so that a tracking event's id is the same on every machine
# and every redelivery: uuid5(namespace, "storeId:uniqueEventId").
TRACKING_NAMESPACE: Final = uuid.UUID("4f1c7d0e-3b5a-5c1e-9a8e-6a1f0b2c3d4e")
SHORT_STRING_BYTES: Final = 255  # AMQP's limit for a property such as content_type
MAX_HEADER_CHARS: Final = 1000


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the gateway knows about a request besides its body."""

    raw_body: bytes
    token_name: str | None
    received_at: datetime


def tracking_event_id(store_id: int, unique_event_id: str) -> str:
    return str(uuid.uuid5(TRACKING_NAMESPACE, f"{store_id}:{unique_event_id}"))


def _common(model: Transition | Tracking, kind: Kind, receipt: Receipt) -> dict[str, Any]:
    return {
        "kind": kind,
        "storeId": model.storeId,
        "oasisApiStoreId": model.store.oasisApiStoreId,
        "aifiUniqueStoreId": model.store.aifiUniqueStoreId,
        "timeOfOrigin": iso(model.timeOfOrigin),
        "timeOfIssue": iso(model.timeOfIssue),
        "receivedAt": iso(receipt.received_at),
        "tokenName": receipt.token_name,
        "fingerprint": hashlib.sha256(receipt.raw_body).hexdigest(),
    }


def transition_data(model: Transition, kind: Kind, receipt: Receipt) -> dict[str, Any]:
    session = model.session
    return _common(model, kind, receipt) | {
        "storeExternalId": model.storeExternalId,
        "sessionId": model.session_id,
        "customerId": model.customer.id,
        "customerRole": model.customer.role,
        "shopperId": model.shopperId or model.shopper.shopperId,
        "groupSize": session.groupSize if session else None,
        "uniqueEventId": None,
    }


def tracking_data(model: Tracking, receipt: Receipt) -> dict[str, Any]:
    return _common(model, "tracking", receipt) | {
        "storeExternalId": model.storeExternalId,
        "sessionId": None,
        "customerId": None,
        "customerRole": None,
        "shopperId": model.shopperId,
        "groupSize": None,
        "uniqueEventId": model.uniqueEventId,
    }


def envelope(
    event_id: str, subject: str | None, data: dict[str, Any], raw: bytes
) -> dict[str, Any]:
    """The CloudEvents 1.0 structured event; the original body rides untouched in `data.payload`."""
    kind: Kind = data["kind"]
    return {
        "specversion": contract.SPECVERSION,
        "id": event_id,
        "source": f"/aifi/stores/{data['storeId']}",
        "type": contract.EVENT_TYPES[kind],
        "time": data["timeOfOrigin"],
        "subject": subject,
        "datacontenttype": "application/json",
        # A Fragment splices the received bytes in as they are: no second
        # serialization, and not one byte of the payload changed.
        "data": data | {"payload": orjson.Fragment(raw)},
    }


def from_transition(model: Transition, kind: Kind, receipt: Receipt) -> dict[str, Any]:
    data = transition_data(model, kind, receipt)
    return envelope(str(uuid.uuid4()), data["sessionId"], data, receipt.raw_body)


def from_tracking(model: Tracking, receipt: Receipt) -> dict[str, Any]:
    data = tracking_data(model, receipt)
    event_id = tracking_event_id(model.storeId, model.uniqueEventId)
    return envelope(event_id, model.uniqueEventId, data, receipt.raw_body)


def to_outbound(
    event: dict[str, Any], received_at: datetime, extra_headers: contract.Headers | None = None
) -> Outbound:
    data = event["data"]
    return Outbound(
        message_id=event["id"],
        routing_key=contract.routing_key(data["kind"], data["storeId"]),
        body=contract.encode_event(event),
        content_type=contract.EVENT_CONTENT_TYPE,
        timestamp_s=int(received_at.timestamp()),
        headers=contract.event_headers(event) | (extra_headers or {}),
    )


def amqp_content_type(content_type: str) -> str:
    """The request's media type if AMQP can carry it (a short string), else octet-stream."""
    fits = 0 < len(content_type.encode()) <= SHORT_STRING_BYTES
    return content_type if fits else "application/octet-stream"


def quarantined(kind: str, reason: str, receipt: Receipt, content_type: str) -> Outbound:
    """An authenticated request we could not accept, kept as received for inspection and replay."""
    return Outbound(
        message_id=str(uuid.uuid4()),
        routing_key=contract.invalid_routing_key(kind),
        body=receipt.raw_body,
        content_type=amqp_content_type(content_type),
        timestamp_s=int(receipt.received_at.timestamp()),
        headers={
            contract.INVALID_KIND_HEADER: kind,
            contract.INVALID_REASON_HEADER: reason[:MAX_HEADER_CHARS],
            contract.TOKEN_NAME_HEADER: receipt.token_name,
            contract.RECEIVED_AT_HEADER: iso(receipt.received_at),
            contract.FINGERPRINT_HEADER: hashlib.sha256(receipt.raw_body).hexdigest(),
            contract.REQUEST_CONTENT_TYPE_HEADER: content_type[:MAX_HEADER_CHARS],
        },
    )
