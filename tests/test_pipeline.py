"""The pipeline as one resource: it recovers, relays, drains and closes; what 200 means in
each mode, and what the gateway answers when it cannot make an event safe."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import contract
from core.contract import Event, Outbound
from core.settings import Settings
from devtools.rabbitnode import free_port
from gateway import spool
from gateway.pipeline import Pipeline, Unavailable
from gateway.publisher import Publisher, Settle
from gateway.spool import Spool
from tests.support.broker import Capture, capturable
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
    settings = gateway_settings(amqp_url, tmp_path, gateway={"ack": "confirmed"})
    async for client in started_client(settings):
        yield client


async def test_full_spool_answers_503_with_retry_after_and_logs_once(
    tiny_spool: Client, examples: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway.pipeline"):
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
    assert Event.from_body(message.body).type == contract.EVENT_TYPES["entered"]
    status = await (await confirmed.get("/readyz")).json()
    assert status["spool"]["depth"] == 0


async def test_confirmed_requests_of_one_loop_turn_share_a_write_and_each_waits_for_its_own(
    amqp_url: str, tmp_path: Path, channel: AbstractChannel, capture: Capture
) -> None:
    """20 requests, one write; the message a queue refuses (nacked) is not taken as
    confirmed with its neighbours: its request waits for the spool, as after a timeout."""
    refused = f"refused.{uuid.uuid4().hex}"
    queue = await channel.declare_queue(
        f"test.{refused}",
        exclusive=True,
        arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
    )
    await queue.bind(contract.EXCHANGE, refused)
    settings = gateway_settings(amqp_url, tmp_path, gateway={"ack": "confirmed"})
    async with Pipeline(settings) as pipeline:
        await asyncio.wait_for(pipeline.publisher.wait_ready(), 10)
        writes = counting_writes(pipeline.publisher)
        batch = [capturable(f"turn-{n}") for n in range(20)]
        batch[7] = capturable("turn-7", routing_key=refused)
        await asyncio.gather(*(pipeline.accept(outbound) for outbound in batch))
        # Then the relay's write of the spooled one.
        assert writes[0] == 20, "one write for the requests of one loop turn"
        assert pipeline.spool.stats().depth == 1, "only turn-7 spooled, and still refused"
        await queue.delete(if_unused=False, if_empty=False)
        assert await pipeline.relay.drain(10)


def counting_writes(publisher: Publisher) -> list[int]:
    """The number of messages of each `publisher.write` from now on."""
    sizes: list[int] = []
    write = publisher.write

    async def counted(messages: Sequence[tuple[Outbound, Any]], settle: Settle[Any]) -> None:
        sizes.append(len(messages))
        await write(messages, settle)

    publisher.write = counted  # type: ignore[method-assign]
    return sizes


def away(settings: Settings) -> Settings:
    """`settings` with a broker that never answers, and a short drain at the exit."""
    amqp = settings.amqp.model_copy(
        update={"urls": (f"amqp://guest:guest@127.0.0.1:{free_port()}/",)}
    )
    http = settings.http.model_copy(update={"shutdown_timeout_s": 0.3})
    return settings.model_copy(update={"amqp": amqp, "http": http})


async def test_what_an_earlier_run_left_is_published_when_the_pipeline_opens(
    settings: Settings, capture: Capture
) -> None:
    earlier = Spool(settings.spool.dir, 1 << 20, 1 << 24)
    earlier.recover()
    for n in range(3):
        earlier.append(capturable(f"left-{n}"))
    earlier.close()
    async with Pipeline(settings) as pipeline:
        received = {(await capture.get()).message_id for _ in range(3)}
        assert await pipeline.relay.drain(5)
    assert received == {"left-0", "left-1", "left-2"}
    assert spool.inspect(settings.spool.dir)["depth"] == 0


async def test_closing_keeps_spooled_what_the_broker_did_not_confirm(
    settings: Settings, capture: Capture
) -> None:
    async with Pipeline(away(settings)) as pipeline:
        for n in range(5):
            await pipeline.accept(capturable(f"kept-{n}"))
        status = pipeline.status()
    assert (status.ready, status.broker_connected, status.spool.depth) == (False, False, 5)
    assert spool.inspect(settings.spool.dir)["depth"] == 5, "closed, and unlocked for the next"
    async with Pipeline(settings):
        received = {(await capture.get()).message_id for _ in range(5)}
    assert received == {f"kept-{n}" for n in range(5)}
    assert spool.inspect(settings.spool.dir)["depth"] == 0


async def test_a_pipeline_accepts_only_while_open(settings: Settings) -> None:
    pipeline = Pipeline(away(settings))
    with pytest.raises(Unavailable):
        await pipeline.accept(capturable("early"))
    async with pipeline:
        await pipeline.accept(capturable("in time"))
        pipeline.stop_being_ready()
        await pipeline.accept(capturable("while stopping"))  # requests in flight finish
        assert pipeline.status().stopping
    with pytest.raises(Unavailable):
        await pipeline.accept(capturable("late"))
    assert spool.inspect(settings.spool.dir)["depth"] == 2
