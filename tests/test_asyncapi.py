"""The AsyncAPI 3.0 document, checked against what the gateway really publishes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import asyncapi, contract
from tests.support import validators
from tests.support.broker import Capture
from tests.support.gateway import AUTH

Client = TestClient[web.Request, web.Application]
PATHS = {
    "entered": "/webhooks/aifi/entered",
    "left": "/webhooks/aifi/left",
    "tracking": "/webhooks/aifi/tracking",
}
KIND_OF = {"entered": "entered", "left": "exited", "tracking": "tracking"}


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def address_pattern(address: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^.]+", re.escape(address)) + "$")


def test_every_reference_resolves_and_names_the_real_exchange() -> None:
    document = asyncapi.document()
    assert document["asyncapi"] == "3.0.0"
    for ref in refs(document):
        assert resolve(document, ref) is not None, ref
    exchange = document["channels"]["entered"]["bindings"]["amqp"]["exchange"]
    assert (exchange["name"], exchange["type"], exchange["durable"]) == (
        contract.EXCHANGE,
        "topic",
        True,
    )


@pytest.mark.nodejs
def test_the_official_asyncapi_cli_finds_no_error(tmp_path: Path) -> None:
    assert " is valid" in validators.asyncapi_validate(asyncapi.document(), tmp_path)


def sent_with(document: dict[str, Any], channel: str) -> dict[str, Any]:
    """The AMQP binding of the operation that sends to `channel`."""
    (operation,) = (
        op
        for op in document["operations"].values()
        if op["action"] == "send" and op["channel"]["$ref"] == f"#/channels/{channel}"
    )
    binding: dict[str, Any] = operation["bindings"]["amqp"]
    return binding


@pytest.mark.parametrize("example", ["entered", "left", "tracking"])
async def test_published_events_match_their_channel_message_and_schema(
    client: Client, capture: Capture, examples: dict[str, bytes], example: str
) -> None:
    document = asyncapi.document()
    kind = KIND_OF[example]
    await client.post(PATHS[example], data=examples[example], headers=AUTH)
    published = await capture.get()
    channel = document["channels"][kind]
    message = resolve(document, channel["messages"][f"{kind}Event"]["$ref"])
    schema = {**resolve(document, message["payload"]["$ref"]), "components": document["components"]}
    assert address_pattern(channel["address"]).match(published.routing_key or "")
    assert published.content_type == message["contentType"]
    jsonschema.validate(orjson.loads(published.body), schema)
    jsonschema.validate(dict(published.headers), message["headers"])
    contract.CloudEvent.model_validate_json(published.body)
    assert published.delivery_mode == sent_with(document, kind)["deliveryMode"]
    assert published.timestamp is not None


async def test_quarantined_requests_match_the_invalid_channel(
    client: Client, capture: Capture
) -> None:
    document = asyncapi.document()
    await client.post(PATHS["entered"], data=b"{oops", headers=AUTH)
    published = await capture.get()
    channel = document["channels"]["invalid"]
    message = resolve(document, channel["messages"]["quarantined"]["$ref"])
    assert address_pattern(channel["address"]).match(published.routing_key or "")
    jsonschema.validate(dict(published.headers), message["headers"])
    assert set(message["headers"]["properties"]) == set(published.headers)
    assert published.delivery_mode == sent_with(document, "invalid")["deliveryMode"]
