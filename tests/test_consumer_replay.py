"""Replay: dead letters go back to their consumer's queue, once each, for another try."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import yaml
from aio_pika.abc import AbstractChannel

from consumers import testing, topology
from consumers.handler import Handlers, Reject
from consumers.replay import replay
from consumers.runner import Worker
from core.contract import (
    ATTEMPTS_HEADER,
    DEAD_EXCHANGE,
    REPLAYS_HEADER,
    Event,
    dead_queue_name,
    queue_name,
)
from core.settings import AmqpSettings, ConsumerSettings
from devtools.rabbitnode import free_port
from devtools.stack import BIN, CONSUMER_COMMAND
from tests.support import broker
from tests.support.consumer import Scratch, running
from tests.support.processes import child_environ
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
BASE = ConsumerSettings(prefetch=8, max_attempts=2, retry_base_ms=50, retry_max_ms=50)


@pytest.fixture
def consumer_base() -> ConsumerSettings:
    """The settings `scratch` makes this module's consumers from."""
    return BASE


class Flaky:
    """Rejects every event until fixed; records what it handled afterwards."""

    def __init__(self) -> None:
        self.fixed = False
        self.handled: list[Event] = []

    async def __call__(self, event: Event) -> None:
        if not self.fixed:
            raise Reject("the cause, not yet fixed")
        self.handled.append(event)


async def bury(channel: AbstractChannel, name: str, count: int) -> list[str]:
    """Put `count` events straight into the dead-letter queue of `name`."""
    dead = await channel.get_exchange(DEAD_EXCHANGE)
    ids = []
    for i in range(count):
        outbound = testing.transition("entered", 1, f"s{i}")
        message = broker.message(outbound)
        message.headers[ATTEMPTS_HEADER] = 5
        await dead.publish(message, name)
        ids.append(outbound.message_id)
    return ids


async def test_replay_moves_dead_letters_back_once_the_cause_is_fixed(
    amqp_url: str, channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    amqp = AmqpSettings(urls=(amqp_url,))
    handler = Flaky()
    worker = Worker(name, settings, amqp, Handlers(one=handler))
    event = testing.transition("entered", store, "s1")
    async with running(worker):
        await broker.publish(channel, [event])
        await eventually(lambda: worker.state.dead_lettered == 1, what="the dead letter")
        handler.fixed = True
        assert await replay(name, settings, amqp) == 1
        await eventually(lambda: worker.state.acked == 1, what="the second try")
    [again] = handler.handled
    assert again.id == event.message_id
    assert await broker.depth(channel, dead_queue_name(name)) == 0


async def test_replay_stops_at_its_limit(
    amqp_url: str, channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    await topology.declare(channel, name, settings)
    ids = await bury(channel, name, 3)
    # The first URL answers nothing: replay moves on to the next, as the workers do.
    amqp = AmqpSettings(urls=(f"amqp://guest:guest@127.0.0.1:{free_port()}/", amqp_url))
    assert await replay(name, settings, amqp, limit=2) == 2
    assert await broker.depth(channel, dead_queue_name(name)) == 1
    main = await channel.get_queue(queue_name(name))
    back = [await main.get(), await main.get()]
    assert [m.message_id for m in back] == ids[:2]
    assert [(m.headers.get(ATTEMPTS_HEADER), m.headers[REPLAYS_HEADER]) for m in back] == [
        (None, 1),
        (None, 1),
    ]
    for message in back:
        await message.ack()


async def test_a_message_that_dies_again_is_not_replayed_twice_in_one_run(
    amqp_url: str, channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    amqp = AmqpSettings(urls=(amqp_url,))
    await topology.declare(channel, name, settings)
    await bury(channel, name, 5)
    worker = Worker(name, settings, amqp, Handlers(one=Flaky()))  # never fixed
    async with running(worker):
        assert await replay(name, settings, amqp) == 5
        await eventually(lambda: worker.state.dead_lettered == 5, what="deaths")
    assert await broker.depth(channel, dead_queue_name(name)) == 5


async def test_the_replay_command_prints_what_it_moved(
    amqp_url: str,
    channel: AbstractChannel,
    scratch: Scratch,
    store: int,
    tmp_path: Path,
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    await topology.declare(channel, name, settings)
    await bury(channel, name, 2)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"consumers": {name: settings.model_dump(mode="json")}}))
    env = child_environ()
    process = await asyncio.create_subprocess_exec(
        str(BIN / CONSUMER_COMMAND[0]),
        *CONSUMER_COMMAND[1:],
        "replay",
        name,
        "--limit",
        "1",
        cwd=ROOT,
        env=env | {"AIFI_AMQP_URL": amqp_url, "AIFI_CONFIG": str(config)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr
    assert orjson.loads(stdout) == {"consumer": name, "moved": 1}
    assert await broker.depth(channel, dead_queue_name(name)) == 1
    assert await broker.depth(channel, queue_name(name)) == 1
