"""The AsyncAPI 3.0 document of what the gateway publishes: `aifi-gateway asyncapi`.

Generated from the contract module and the consumers' topology, so it cannot
drift from the code; the tests check it against real published messages.
"""

from __future__ import annotations

from typing import Any, Final

from core import contract
from core.contract import KINDS, CloudEvent, Kind

SCHEMA_REF: Final = "#/components/schemas/{model}"
EXCHANGE_BINDING: Final = {
    "amqp": {
        "is": "routingKey",
        "exchange": {
            "name": contract.EXCHANGE,
            "type": "topic",
            "durable": True,
            "autoDelete": False,
            "vhost": "/",
        },
        "bindingVersion": "0.3.0",
    }
}
# How the gateway publishes (persistent, mandatory, timestamped) and how the workers
# consume (manual acks): properties of the operation in AMQP bindings 0.3.0, which
# allow nothing but `bindingVersion` on a message.
SEND_BINDING: Final = {
    "amqp": {"deliveryMode": 2, "mandatory": True, "timestamp": True, "bindingVersion": "0.3.0"}
}
RECEIVE_BINDING: Final = {"amqp": {"ack": True, "bindingVersion": "0.3.0"}}


def header_schema() -> dict[str, Any]:
    properties: dict[str, Any] = {
        f"{contract.HEADER_PREFIX}{name}": {"type": ["string", "null"]}
        for name in contract.HEADER_ATTRIBUTES
    }
    properties[contract.STORE_ID_HEADER] = {"type": ["integer", "null"]}
    properties[contract.SESSION_ID_HEADER] = {"type": ["string", "null"]}
    properties[contract.FINGERPRINT_HEADER] = {"type": "string", "pattern": contract.SHA256_HEX}
    required = [f"{contract.HEADER_PREFIX}{name}" for name in contract.REQUIRED_ATTRIBUTES]
    return {"type": "object", "properties": properties, "required": required}


def event_message(kind: Kind) -> dict[str, Any]:
    return {
        "name": f"{kind}Event",
        "title": f"{contract.EVENT_TYPES[kind]} event",
        "contentType": contract.EVENT_CONTENT_TYPE,
        "headers": header_schema(),
        "payload": {"$ref": SCHEMA_REF.format(model="CloudEvent")},
    }


def event_channel(kind: str) -> dict[str, Any]:
    return {
        "address": f"{kind}.{{storeId}}",
        "description": f"Every {kind} event, routed by AiFi store id (`unknown` when absent).",
        "parameters": {"storeId": {"description": "AiFi's integer store id, or `unknown`"}},
        "messages": {f"{kind}Event": {"$ref": f"#/components/messages/{kind}Event"}},
        "bindings": EXCHANGE_BINDING,
    }


def invalid_channel() -> dict[str, Any]:
    return {
        "address": "invalid.{kind}",
        "description": "Authenticated requests that could not be accepted, as received.",
        "parameters": {"kind": {"enum": list(KINDS)}},
        "messages": {"quarantined": {"$ref": "#/components/messages/quarantined"}},
        "bindings": EXCHANGE_BINDING,
    }


def quarantined_message() -> dict[str, Any]:
    headers = [
        contract.INVALID_KIND_HEADER,
        contract.INVALID_REASON_HEADER,
        contract.TOKEN_NAME_HEADER,
        contract.RECEIVED_AT_HEADER,
        contract.FINGERPRINT_HEADER,
        contract.REQUEST_CONTENT_TYPE_HEADER,
    ]
    return {
        "name": "quarantined",
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "properties": {h: {"type": ["string", "null"]} for h in headers},
        },
        "payload": {"description": "the request body exactly as received"},
    }


def queue_channel(kind: str) -> dict[str, Any]:
    name = contract.queue_name(kind)
    return {
        "address": name,
        "description": f"Quorum queue of the `{kind}` worker, bound with `{kind}.#`; "
        f"dead letters go to `{contract.dead_queue_name(kind)}`.",
        "messages": {f"{kind}Event": {"$ref": f"#/components/messages/{kind}Event"}},
        "bindings": {
            "amqp": {
                "is": "queue",
                "queue": {
                    "name": name,
                    "durable": True,
                    "exclusive": False,
                    "autoDelete": False,
                    "vhost": "/",
                },
                "bindingVersion": "0.3.0",
            }
        },
    }


def operations() -> dict[str, Any]:
    ops: dict[str, Any] = {}
    for kind in KINDS:
        ops[f"publish_{kind}"] = send(f"#/channels/{kind}")
        ops[f"consume_{kind}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/queue_{kind}"},
            "bindings": RECEIVE_BINDING,
        }
    ops["quarantine"] = send("#/channels/invalid")
    return ops


def send(channel_ref: str) -> dict[str, Any]:
    return {"action": "send", "channel": {"$ref": channel_ref}, "bindings": SEND_BINDING}


def schemas() -> dict[str, Any]:
    schema = CloudEvent.model_json_schema(ref_template=SCHEMA_REF)
    defs = schema.pop("$defs", {})
    return {"CloudEvent": schema, **defs}


def document() -> dict[str, Any]:
    channels: dict[str, Any] = {kind: event_channel(kind) for kind in KINDS}
    channels |= {f"queue_{kind}": queue_channel(kind) for kind in KINDS}
    channels["invalid"] = invalid_channel()
    messages = {f"{kind}Event": event_message(kind) for kind in KINDS}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "AiFi webhook events",
            "version": "1.0.0",
            "description": f"Events on the durable topic exchange `{contract.EXCHANGE}`.",
        },
        "defaultContentType": contract.EVENT_CONTENT_TYPE,
        "channels": channels,
        "operations": operations(),
        "components": {
            "messages": messages | {"quarantined": quarantined_message()},
            "schemas": schemas(),
        },
    }
