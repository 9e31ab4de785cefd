"""HTTP tests through a real loopback server, reading what reached a real queue."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import contract
from tests.support import AUTH, TOKEN_NAME, Capture

Client = TestClient[web.Request, web.Application]
PATHS = {
    "entered": "/webhooks/aifi/entered",
    "left": "/webhooks/aifi/left",
    "exited": "/webhooks/aifi/exited",
    "tracking": "/webhooks/aifi/tracking",
}


async def post(client: Client, path: str, body: bytes, **headers: str) -> tuple[int, Any]:
    response = await client.post(path, data=body, headers=AUTH | headers)
    return response.status, orjson.loads(await response.read() or b"null")


@pytest.mark.parametrize(
    ("example", "path", "kind"),
    [
        ("entered", "entered", "entered"),
        ("left", "left", "exited"),
        ("left", "exited", "exited"),
        ("tracking", "tracking", "tracking"),
    ],
)
async def test_each_example_is_published_once_as_a_cloudevent(
    client: Client,
    capture: Capture,
    examples: dict[str, bytes],
    example: str,
    path: str,
    kind: str,
) -> None:
    status, body = await post(client, PATHS[path], examples[example])
    assert (status, body) == (200, "ok")
    message = await capture.get()
    event = contract.decode_event(message.body)
    assert message.routing_key == f"{kind}.0"
    assert message.content_type == contract.EVENT_CONTENT_TYPE
    assert message.message_id == event["id"]
    assert message.delivery_mode == 2
    assert message.timestamp is not None
    assert event["type"] == contract.EVENT_TYPES[kind]  # type: ignore[index]
    assert event["time"] == "2019-08-24T14:15:22Z"
    assert event["data"]["tokenName"] == TOKEN_NAME
    assert event["data"]["payload"] == orjson.loads(examples[example])
    assert message.headers["cloudEvents_id"] == event["id"]
    assert message.headers["cloudEvents_type"] == event["type"]
    assert (
        message.headers[contract.FINGERPRINT_HEADER]
        == hashlib.sha256(examples[example]).hexdigest()
    )
    assert await capture.nothing_more()


async def test_twins_stay_two_events_sharing_a_fingerprint(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    for _ in range(2):
        assert (await post(client, PATHS["left"], examples["left"]))[0] == 200
    first, second = [contract.decode_event((await capture.get()).body) for _ in range(2)]
    assert first["id"] != second["id"]
    assert first["data"]["fingerprint"] == second["data"]["fingerprint"]


async def test_redelivered_tracking_keeps_its_id(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    for _ in range(2):
        assert (await post(client, PATHS["tracking"], examples["tracking"]))[0] == 200
    ids = {contract.decode_event((await capture.get()).body)["id"] for _ in range(2)}
    assert len(ids) == 1


async def test_unknown_fields_are_kept(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    payload = orjson.loads(examples["entered"])
    payload["newTopLevel"] = {"nested": [1, 2]}
    payload["customer"]["loyaltyTier"] = "gold"
    status, _ = await post(client, PATHS["entered"], orjson.dumps(payload))
    event = contract.decode_event((await capture.get()).body)
    assert status == 200
    assert event["data"]["payload"]["newTopLevel"] == {"nested": [1, 2]}
    assert event["data"]["payload"]["customer"]["loyaltyTier"] == "gold"


@pytest.mark.parametrize(
    ("example", "path", "field"),
    [
        ("entered", "entered", "session"),
        ("entered", "entered", "storeExternalId"),
        ("left", "left", "session"),
        ("tracking", "tracking", "shopperId"),
    ],
)
async def test_documented_nullable_fields_accept_null(
    client: Client,
    capture: Capture,
    examples: dict[str, bytes],
    example: str,
    path: str,
    field: str,
) -> None:
    payload = orjson.loads(examples[example])
    payload[field] = None
    status, _ = await post(client, PATHS[path], orjson.dumps(payload))
    event = contract.decode_event((await capture.get()).body)
    assert status == 200
    assert event["data"]["payload"][field] is None


async def test_session_null_falls_back_to_top_level_session_id(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    payload = orjson.loads(examples["entered"])
    payload["session"] = None
    payload["sessionId"] = "top-level"
    await post(client, PATHS["entered"], orjson.dumps(payload))
    event = contract.decode_event((await capture.get()).body)
    assert event["subject"] == event["data"]["sessionId"] == "top-level"


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic dGVzdA==", "Bearer "])
async def test_bad_or_missing_token_is_401_and_publishes_nothing(
    client: Client, capture: Capture, examples: dict[str, bytes], authorization: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = await client.post(PATHS["entered"], data=examples["entered"], headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await response.json(content_type=None))["status"] == 401
    assert await capture.nothing_more()


async def quarantined(capture: Capture) -> Any:
    message = await capture.get()
    assert message.routing_key is not None
    assert message.routing_key.startswith("invalid.")
    return message


async def test_invalid_json_is_400_and_quarantined_as_received(
    client: Client, capture: Capture
) -> None:
    raw = b'{"storeId": 1,, oops'
    status, body = await post(client, PATHS["entered"], raw)
    message = await quarantined(capture)
    assert status == 400
    assert "invalid JSON" in body["detail"]
    assert message.body == raw
    assert message.routing_key == "invalid.entered"
    assert message.headers[contract.TOKEN_NAME_HEADER] == TOKEN_NAME
    assert "invalid JSON" in str(message.headers[contract.INVALID_REASON_HEADER])


async def test_schema_violation_is_422_naming_the_fields(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    payload = orjson.loads(examples["entered"])
    del payload["storeId"]
    payload["customer"]["role"] = "astronaut"
    raw = orjson.dumps(payload)
    status, body = await post(client, PATHS["entered"], raw)
    message = await quarantined(capture)
    assert status == 422
    assert {e["field"] for e in body["errors"]} >= {"storeId", "customer.role"}
    assert message.body == raw


async def test_missing_every_session_id_is_422(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    payload = orjson.loads(examples["entered"])
    payload["session"] = None
    del payload["sessionId"]
    status, _ = await post(client, PATHS["entered"], orjson.dumps(payload))
    assert status == 422
    assert (await quarantined(capture)).routing_key == "invalid.entered"


async def test_non_json_media_type_is_415_and_quarantined(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    status, _ = await post(
        client, PATHS["tracking"], examples["tracking"], **{"Content-Type": "text/plain"}
    )
    message = await quarantined(capture)
    assert status == 415
    assert message.routing_key == "invalid.tracking"
    assert message.body == examples["tracking"]


async def test_declared_oversize_body_is_413_without_publishing(
    client: Client, capture: Capture, settings: Any
) -> None:
    big = b"{" + b" " * settings.http.max_body_bytes + b"}"
    status, body = await post(client, PATHS["entered"], big)
    assert status == 413
    assert "exceeds" in body["detail"]
    assert await capture.nothing_more()


async def test_chunked_oversize_body_is_cut_off_with_413(
    client: Client, capture: Capture, settings: Any
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(settings.http.max_body_bytes // 65536 + 2):
            yield b" " * 65536

    response = await client.post(PATHS["entered"], data=chunks(), headers=AUTH)
    assert response.status == 413
    assert await capture.nothing_more()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", PATHS["entered"], 405), ("POST", "/webhooks/aifi/checkout", 404)],
)
async def test_unknown_routes_answer_json_problems(
    client: Client, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path, headers=AUTH)
    assert response.status == status
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize(
    "body", [b"", b"null", b"[]", b'"x"', b"1e999999", b"{}", b"\xff\xfe", b'{"storeId": 1}']
)
async def test_odd_bodies_never_give_5xx(client: Client, capture: Capture, body: bytes) -> None:
    status, problem_doc = await post(client, PATHS["entered"], body)
    assert status in {400, 422}
    assert problem_doc["status"] == status
    assert (await quarantined(capture)).body == body


async def test_probes(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["ready"] is True


async def test_a_request_id_is_echoed_or_made_up(
    client: Client, examples: dict[str, bytes]
) -> None:
    given = await client.post(
        PATHS["tracking"], data=examples["tracking"], headers=AUTH | {"X-Request-Id": "r-1"}
    )
    assert given.headers["X-Request-Id"] == "r-1"
    made = [
        (await client.post(PATHS["tracking"], data=b"{", headers=AUTH)).headers["X-Request-Id"]
        for _ in range(2)
    ]
    assert made[0] != made[1]
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in made)
