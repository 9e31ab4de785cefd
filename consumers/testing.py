"""Events for testing a handler: for a downstream team's tests as much as ours.

Each builder returns the `Outbound` message the gateway would publish for one AiFi call,
built from the contract's plain forms (`core.contract.ContextFields`, `NormalizedFields`)
by `contract.message`, as the gateway builds it: a valid envelope of its kind, not a copy
of the gateway's normalization. A
handler is tested with `Event.from_body(outbound.body)`; a worker, by publishing the
message to the events exchange (`core.contract.EXCHANGE`) with its routing key, headers,
message id and content type.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

from core import contract
from core.contract import (
    DATA_CONTENT_TYPE,
    EVENT_TYPES,
    SPECVERSION,
    ContextFields,
    Kind,
    NormalizedFields,
    Outbound,
    tracking_event_id,
)
from core.times import iso

__all__ = ["ORIGIN", "tracking", "transition", "transition_body"]

ORIGIN: Final = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def transition_body(store_id: int, session_id: str, **fields: Any) -> bytes:
    """A minimal AiFi "entered"/"left" body; `fields` override or add top-level fields."""
    body = {
        "sessionId": session_id,
        "session": {"sessionId": session_id, "groupSize": 1},
        "customer": {"id": f"c-{session_id}", "role": "customer"},
        "storeId": store_id,
        "store": {"oasisApiStoreId": store_id, "aifiUniqueStoreId": f"s-{store_id}"},
        "storeExternalId": f"ext-{store_id}",
        "timeOfOrigin": ORIGIN.isoformat(),
        "timeOfIssue": ORIGIN.isoformat(),
        "payment": {"paymentProvider": "NONE"},
        "shopperId": f"p-{session_id}",
        "shopper": {"shopperId": f"p-{session_id}"},
    }
    return orjson.dumps(body | fields)


def transition(
    kind: Literal["entered", "exited"], store_id: int, session_id: str, **fields: Any
) -> Outbound:
    """An event of one "entered" or "left" call; `fields` override the call's top-level fields
    (`timeOfOrigin`, `shopperId`, ...), and the event's fields of the same name."""
    raw = transition_body(store_id, session_id, **fields)
    shopper_id = fields.get("shopperId", f"p-{session_id}")
    data = _data(kind, store_id, raw, fields, session_id, shopper_id, None)
    return _outbound(str(uuid.uuid4()), session_id, data, raw)


def tracking(store_id: int, unique_event_id: str, shopper_id: str | None) -> Outbound:
    """An event of one tracking call (its id, as the gateway's, follows from its ids)."""
    body = {
        "storeId": store_id,
        "store": {"oasisApiStoreId": store_id, "aifiUniqueStoreId": f"s-{store_id}"},
        "timeOfOrigin": ORIGIN.isoformat(),
        "timeOfIssue": ORIGIN.isoformat(),
        "shopperId": shopper_id,
        "uniqueEventId": unique_event_id,
    }
    raw = orjson.dumps(body)
    data = _data("tracking", store_id, raw, {}, None, shopper_id, unique_event_id)
    return _outbound(tracking_event_id(store_id, unique_event_id), unique_event_id, data, raw)


def _data(
    kind: Kind,
    store_id: int,
    raw: bytes,
    fields: dict[str, Any],
    session_id: str | None,
    shopper_id: str | None,
    unique_event_id: str | None,
) -> NormalizedFields:
    """`data` but its payload; a session's fields (None for tracking) follow from its id."""
    session = session_id is not None
    return {
        "kind": kind,
        "storeId": store_id,
        "oasisApiStoreId": store_id,
        "aifiUniqueStoreId": f"s-{store_id}",
        "timeOfOrigin": fields.get("timeOfOrigin", iso(ORIGIN)),
        "timeOfIssue": fields.get("timeOfIssue", iso(ORIGIN)),
        "receivedAt": iso(datetime.now(UTC)),
        "tokenName": "test",
        "fingerprint": hashlib.sha256(raw).hexdigest(),
        "storeExternalId": f"ext-{store_id}" if session else None,
        "sessionId": session_id,
        "customerId": f"c-{session_id}" if session else None,
        "customerRole": "customer" if session else None,
        "shopperId": shopper_id,
        "groupSize": 1 if session else None,
        "uniqueEventId": unique_event_id,
    }


def _outbound(event_id: str, subject: str, data: NormalizedFields, raw: bytes) -> Outbound:
    context: ContextFields = {
        "specversion": SPECVERSION,
        "id": event_id,
        "source": f"/aifi/stores/{data['storeId']}",
        "type": EVENT_TYPES[data["kind"]],
        "time": data["timeOfOrigin"],
        "subject": subject,
        "datacontenttype": DATA_CONTENT_TYPE,
    }
    return contract.message(context, data, raw, int(time.time()), {})
