"""The application's own answers (gateway.app): aiohttp's errors as problems, request ids."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import PIPELINE
from tests.support.gateway import AUTH
from tests.test_handlers import connected, read_answer

Client = TestClient[web.Request, web.Application]
ENTERED = "/webhooks/aifi/entered"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", ENTERED, 405), ("PUT", ENTERED, 405), ("POST", "/webhooks/aifi/checkout", 404)],
)
async def test_unknown_routes_answer_json_problems_with_the_request_id(
    client: Client, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path, headers=AUTH | {"X-Request-Id": "r-404"})
    problem = await response.json(content_type=None)
    assert response.status == status
    assert response.content_type == "application/problem+json"
    assert response.headers["X-Request-Id"] == "r-404"
    assert problem["status"] == status


async def test_a_405_lists_the_allowed_methods(client: Client) -> None:
    response = await client.get(ENTERED)
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert "POST" in (await response.json(content_type=None))["detail"]


async def test_a_404_names_the_path(client: Client) -> None:
    response = await client.post("/webhooks/aifi/checkout", data=b"{}", headers=AUTH)
    assert "/webhooks/aifi/checkout" in (await response.json(content_type=None))["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nowhere"),
        ("DELETE", ENTERED),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ],
)
async def test_every_answer_carries_a_request_id_made_up_when_none_was_sent(
    client: Client, method: str, path: str
) -> None:
    ids = [(await client.request(method, path)).headers["X-Request-Id"] for _ in range(2)]
    assert ids[0] != ids[1]
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in ids)


async def test_an_unexpected_error_is_a_json_problem_with_the_request_id(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client.app is not None
    pipeline = client.app[PIPELINE]

    def broken() -> None:
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(pipeline, "status", broken)
    response = await client.get("/readyz", headers={"X-Request-Id": "r-500"})
    assert response.status == 500
    assert response.content_type == "application/problem+json"
    assert response.headers["X-Request-Id"] == "r-500"


def head(request_line: str, expect: str) -> bytes:
    lines = [request_line, "Host: 127.0.0.1", "Content-Length: 2", f"Expect: {expect}"]
    return ("\r\n".join([*lines, "X-Request-Id: r-expect"]) + "\r\n\r\n").encode()


@pytest.mark.parametrize("path", ["/nowhere", "/healthz"])
async def test_off_the_webhooks_100_continue_comes_before_the_answer(
    client: Client, path: str
) -> None:
    async with connected(client) as (reader, writer):
        writer.write(head(f"POST {path} HTTP/1.1", "100-continue"))
        interim = await read_answer(reader)
        writer.write(b"{}")
        final = await read_answer(reader)
    assert interim.status == 100
    assert final.status in {404, 405}
    assert final.headers["content-type"] == "application/problem+json"


async def test_off_the_webhooks_an_unknown_expectation_is_a_417_problem(client: Client) -> None:
    async with connected(client) as (reader, writer):
        writer.write(head("GET /healthz HTTP/1.1", "200-ok"))
        answer = await read_answer(reader)
    assert answer.status == 417
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["x-request-id"] == "r-expect"


async def test_an_http_1_0_client_gets_no_100_continue(client: Client) -> None:
    """HTTP/1.0 has no interim answers (RFC 9110, 10.1.1): the answer comes straight."""
    async with connected(client) as (reader, writer):
        writer.write(head("POST /nowhere HTTP/1.0", "100-continue") + b"{}")
        answer = await read_answer(reader)
    assert answer.status == 404
