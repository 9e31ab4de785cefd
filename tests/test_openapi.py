"""The OpenAPI 3.1 document: valid, served, and true to what the gateway accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from core.settings import Settings
from gateway import openapi
from tests.support import validators

Client = TestClient[web.Request, web.Application]


def body_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    """The request body schema of `path`, resolvable on its own."""
    ref = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return {**ref, "components": document["components"]}


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi.document(Settings())
    validate(document)
    assert document["openapi"] == "3.1.0"


@pytest.mark.nodejs
def test_redocly_recommended_rules_find_no_error(tmp_path: Path) -> None:
    assert "is valid" in validators.redocly_lint(openapi.document(Settings()), tmp_path)


async def test_it_is_served_at_openapi_json(client: Client, settings: Settings) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert await response.json() == orjson.loads(orjson.dumps(openapi.document(settings)))


@pytest.mark.parametrize(
    ("example", "path"),
    [
        ("entered", "/webhooks/aifi/entered"),
        ("left", "/webhooks/aifi/left"),
        ("tracking", "/webhooks/aifi/tracking"),
    ],
)
def test_the_examples_match_their_documented_schema(
    examples: dict[str, bytes], example: str, path: str
) -> None:
    schema = body_schema(openapi.document(Settings()), path)
    jsonschema.validate(orjson.loads(examples[example]), schema)


def test_the_schema_refuses_what_the_gateway_refuses(examples: dict[str, bytes]) -> None:
    schema = body_schema(openapi.document(Settings()), "/webhooks/aifi/entered")
    body = orjson.loads(examples["entered"])
    body["customer"]["role"] = "astronaut"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, schema)


def test_every_answer_the_gateway_gives_is_documented() -> None:
    responses = openapi.document(Settings())["paths"]["/webhooks/aifi/entered"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "408", "413", "415", "422", "429", "503"}
