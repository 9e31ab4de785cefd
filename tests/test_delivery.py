"""What 200 means in each mode, and what the gateway answers when it cannot make an event safe."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import contract
from tests.support.broker import Capture
from tests.support.gateway import AUTH, gateway_settings, started_client

Client = TestClient[web.Request, web.Application]
ENTERED = "/webhooks/aifi/entered"


@pytest.fixture
async def tiny_spool(amqp_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    async for client in started_client(
        gateway_settings(amqp_url, tmp_path, spool={"max_bytes": 4000})
    ):
        yield client


@pytest.fixture
async def confirmed(amqp_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    async for client in started_client(gateway_settings(amqp_url, tmp_path, ack="confirmed")):
        yield client


async def test_full_spool_answers_503_with_retry_after_and_logs_once(
    tiny_spool: Client, examples: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway.delivery"):
        statuses = []
        for _ in range(4):
            response = await tiny_spool.post(ENTERED, data=examples["entered"], headers=AUTH)
            statuses.append(response.status)
            if response.status == 503:
                assert response.headers["Retry-After"].isdigit()
    assert statuses[0] == 200
    assert set(statuses[1:]) == {503}
    assert len([r for r in caplog.records if "cannot accept" in r.getMessage()]) == 1
    ready = await tiny_spool.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["spool_problem"].startswith("spool holds")


async def test_confirmed_mode_answers_after_the_broker_confirmed(
    confirmed: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    response = await confirmed.post(ENTERED, data=examples["entered"], headers=AUTH)
    assert response.status == 200
    message = await capture.get()
    assert message.message_id == response.headers["X-Event-Id"]
    assert contract.decode_event(message.body)["type"] == contract.EVENT_TYPES["entered"]
    status = await (await confirmed.get("/readyz")).json()
    assert status["spool"]["depth"] == 0
