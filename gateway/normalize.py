"""Normalization of a validated AiFi webhook into the message of one CloudEvents event."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Generic, Literal, TypeVar

from pydantic import BaseModel

from core import contract
from core.contract import ContextFields, Headers, Kind, NormalizedFields, Outbound, TraceFields
from core.times import iso
from gateway.models import Tracking, Transition

SHORT_STRING_BYTES: Final = 255  # AMQP's limit for a property such as content_type
MAX_HEADER_CHARS: Final = 1000

Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the gateway knows about a request besides its body."""

    raw_body: bytes
    token_name: str | None
    received_at: datetime
    # The HTTP headers named in `http.forward_headers`, as AMQP headers.
    forwarded: Headers = field(default_factory=dict)
    # The event's trace: the webhook's `traceparent`, a span of ours, or a new trace.
    trace: TraceFields = field(default_factory=lambda: TraceFields())


def fingerprint(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def new_event_id() -> str:
    """A new event's id: a random (version 4) UUID."""
    return contract.random_uuid()


def transition_data(
    model: Transition, kind: Kind, receipt: Receipt, session_id: str
) -> NormalizedFields:
    session = model.session
    return normalized(
        model,
        kind,
        receipt,
        session_id=session_id,
        customer=(model.customer.id, model.customer.role),
        shopper_id=model.shopperId or model.shopper.shopperId,
        group_size=session.groupSize if session else None,
        unique_event_id=None,
    )


def tracking_data(model: Tracking, receipt: Receipt) -> NormalizedFields:
    return normalized(
        model,
        "tracking",
        receipt,
        session_id=None,
        customer=(None, None),
        shopper_id=model.shopperId,
        group_size=None,
        unique_event_id=model.uniqueEventId,
    )


def normalized(
    model: Transition | Tracking,
    kind: Kind,
    receipt: Receipt,
    *,
    session_id: str | None,
    customer: tuple[str | int | None, str | None],
    shopper_id: str | None,
    group_size: int | None,
    unique_event_id: str | None,
) -> NormalizedFields:
    """`data` without the payload, in wire order, built in one literal (no merges): what both
    kinds share comes from the model and the receipt, the rest is the kind's."""
    return {
        "kind": kind,
        "storeId": model.storeId,
        "oasisApiStoreId": model.store.oasisApiStoreId,
        "aifiUniqueStoreId": model.store.aifiUniqueStoreId,
        "timeOfOrigin": iso(model.timeOfOrigin),
        "timeOfIssue": iso(model.timeOfIssue),
        "receivedAt": iso(receipt.received_at),
        "tokenName": receipt.token_name,
        "fingerprint": fingerprint(receipt.raw_body),
        "storeExternalId": model.storeExternalId,
        "sessionId": session_id,
        "customerId": customer[0],
        "customerRole": customer[1],
        "shopperId": shopper_id,
        "groupSize": group_size,
        "uniqueEventId": unique_event_id,
    }


def context(event_id: str, subject: str, data: NormalizedFields) -> ContextFields:
    """The context attributes: `time` is AiFi's `timeOfOrigin`, `type` follows the kind."""
    return {
        "specversion": contract.SPECVERSION,
        "id": event_id,
        "source": f"/aifi/stores/{data['storeId']}",
        "type": contract.EVENT_TYPES[data["kind"]],
        "time": data["timeOfOrigin"],
        "subject": subject,
        "datacontenttype": contract.DATA_CONTENT_TYPE,
    }


def message(event_id: str, subject: str, data: NormalizedFields, receipt: Receipt) -> Outbound:
    """The event's message; the received body rides untouched in `data.payload`."""
    return contract.message(
        context(event_id, subject, data),
        data,
        receipt.raw_body,
        int(receipt.received_at.timestamp()),
        receipt.forwarded,
        receipt.trace,
    )


def transition(kind: Literal["entered", "exited"]) -> Callable[[Transition, Receipt], Outbound]:
    """The normalization of an "entered" or "left" call: a new event id for every call."""

    def build(model: Transition, receipt: Receipt) -> Outbound:
        session_id = model.session_id
        data = transition_data(model, kind, receipt, session_id)
        return message(new_event_id(), session_id, data, receipt)

    return build


def tracking(model: Tracking, receipt: Receipt) -> Outbound:
    """The normalization of a tracking call: its id follows from (storeId, uniqueEventId)."""
    event_id = contract.tracking_event_id(model.storeId, model.uniqueEventId)
    return message(event_id, model.uniqueEventId, tracking_data(model, receipt), receipt)


@dataclass(frozen=True, slots=True)
class Normalizer(Generic[Model]):
    """One webhook kind: the model its body must match, and how a valid one becomes an event."""

    kind: Kind
    model: type[Model]
    build: Callable[[Model, Receipt], Outbound]


ENTERED: Final = Normalizer("entered", Transition, transition("entered"))
EXITED: Final = Normalizer("exited", Transition, transition("exited"))
TRACKING: Final = Normalizer("tracking", Tracking, tracking)


def amqp_content_type(content_type: str) -> str:
    """The request's media type if AMQP can carry it (a short string), else octet-stream."""
    fits = 0 < len(content_type.encode()) <= SHORT_STRING_BYTES
    return content_type if fits else "application/octet-stream"


def quarantined(kind: str, reason: str, receipt: Receipt, content_type: str) -> Outbound:
    """An authenticated request we could not accept, kept as received for inspection and replay."""
    return Outbound(
        message_id=new_event_id(),
        routing_key=contract.invalid_routing_key(kind),
        body=receipt.raw_body,
        content_type=amqp_content_type(content_type),
        timestamp_s=int(receipt.received_at.timestamp()),
        headers={
            contract.INVALID_KIND_HEADER: kind,
            contract.INVALID_REASON_HEADER: reason[:MAX_HEADER_CHARS],
            contract.TOKEN_NAME_HEADER: receipt.token_name,
            contract.RECEIVED_AT_HEADER: iso(receipt.received_at),
            contract.FINGERPRINT_HEADER: fingerprint(receipt.raw_body),
            contract.REQUEST_CONTENT_TYPE_HEADER: content_type[:MAX_HEADER_CHARS],
        },
    )
