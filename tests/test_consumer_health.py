"""The health endpoint: consumer state as JSON, 503 until the worker consumes."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from consumers import health
from consumers.health import ConsumerState
from devtools.rabbitnode import free_port


async def test_healthz_reports_the_state_and_is_503_until_consuming() -> None:
    state = ConsumerState("entered")
    async with TestClient(TestServer(health.create_app(state))) as client:
        response = await client.get("/healthz")
        assert response.status == 503
        assert (await response.json())["consumer"] == "entered"
        state.connected = state.consuming = True
        state.acked, state.dead_lettered = 7, 1
        response = await client.get("/healthz")
        body = await response.json()
    assert response.status == 200
    assert response.content_type == "application/json"
    assert (body["connected"], body["consuming"], body["acked"], body["dead_lettered"]) == (
        True,
        True,
        7,
        1,
    )
    assert set(body) >= {
        "reconnects",
        "received",
        "redelivered",
        "retried",
        "requeued",
        "batches",
        "last_error",
        "started_at",
    }


async def test_serving_listens_only_for_the_block() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    async with aiohttp.ClientSession() as session:
        async with (
            health.serving(ConsumerState("x"), "127.0.0.1", port),
            session.get(url) as response,
        ):
            assert response.status == 503
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url)


async def test_port_0_serves_nothing() -> None:
    async with health.serving(ConsumerState("x"), "127.0.0.1", 0):
        pass
