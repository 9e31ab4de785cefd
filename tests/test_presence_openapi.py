"""The presence API's OpenAPI 3.1 document: valid to third-party validators, printed by
`aifi-presence openapi`, and true to what the API answers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from consumers import testing
from core.contract import Event
from core.settings import LedgerSettings, Settings
from ledger import ledger
from presence import openapi
from presence.app import create_app
from tests.support import validators
from tests.support.gateway import CONFIG
from tests.support.processes import child_environ

Client = TestClient[web.Request, web.Application]
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "openapi-test-token"


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi.document()
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_redocly_recommended_rules_find_no_error(tmp_path: Path) -> None:
    assert "is valid" in validators.redocly_lint(openapi.document(), tmp_path)


def test_aifi_presence_openapi_prints_it_without_a_token() -> None:
    env = child_environ() | {"AIFI_CONFIG": str(CONFIG)}
    done = subprocess.run(
        [sys.executable, "-m", "presence", "openapi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == orjson.loads(orjson.dumps(openapi.document()))


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    ledger_settings = LedgerSettings(db=tmp_path / "ledger.sqlite3")
    made = [
        testing.transition("entered", 5, "s1"),
        testing.transition("exited", 5, "s1"),
        testing.tracking(5, "u1", None),
    ]
    async with ledger.opened(ledger_settings) as writer:
        await writer.apply([Event.from_body(outbound.body) for outbound in made])
    settings = Settings.model_validate(
        {"presence": {"tokens": {"t": TOKEN}}, "ledger": ledger_settings.model_dump(mode="json")}
    )
    async with TestClient(TestServer(create_app(settings), host="127.0.0.1")) as client:
        yield client


def response_schema(path: str, status: int) -> tuple[str, dict[str, Any]]:
    """The media type and schema documented for `status` of GET `path`, resolvable alone."""
    document = openapi.document()
    [(media_type, entry)] = document["paths"][path]["get"]["responses"][str(status)][
        "content"
    ].items()
    return media_type, {**entry["schema"], "components": document["components"]}


@pytest.mark.parametrize(
    ("path", "url", "status"),
    [
        ("/stores", "/stores", 200),
        ("/stores/{storeId}", "/stores/5", 200),
        ("/stores/{storeId}", "/stores/6", 404),
        ("/stores/{storeId}", "/stores/five", 422),
        ("/stores/{storeId}", "/stores/5", 401),
        ("/sessions/{sessionId}", "/sessions/s1", 200),
        ("/sessions/{sessionId}", "/sessions/s2", 404),
        ("/tracking/{uniqueEventId}", "/tracking/u1", 200),
        ("/tracking/{uniqueEventId}", "/tracking/u2", 404),
        ("/readyz", "/readyz", 200),
    ],
)
async def test_every_answer_matches_its_documented_schema(
    api: Client, path: str, url: str, status: int
) -> None:
    headers = {} if status == 401 else {"Authorization": f"Bearer {TOKEN}"}
    response = await api.get(url, headers=headers)
    assert response.status == status
    media_type, schema = response_schema(path, status)
    assert response.content_type == media_type
    jsonschema.validate(await response.json(content_type=None), schema)
