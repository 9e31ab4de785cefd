"""Migration: a queue declared with an earlier release's arguments gets this release's,
and keeps every message, also when a run was interrupted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import orjson
import pytest
import yaml
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from consumers import topology
from consumers.migrate import HOLDING_ARGUMENTS, HOLDING_SUFFIX, MigrationError, migrate
from core.contract import DEAD_EXCHANGE, dead_queue_name
from core.settings import AmqpSettings, ConsumerSettings
from core.topology import TopologyError, declare_exchanges
from devtools.stack import BIN, CONSUMER_COMMAND
from tests.support import broker
from tests.support.consumer import Scratch
from tests.support.processes import child_environ
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
BASE = ConsumerSettings(max_attempts=2, retry_base_ms=50, retry_max_ms=50)


@pytest.fixture
def consumer_base() -> ConsumerSettings:
    """The settings `scratch` makes this module's consumers from."""
    return BASE


# How the previous release declared `aifi.<name>.dead`: no delivery limit.
OLD_DEAD_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}
STAMP = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def message(n: int) -> aio_pika.Message:
    return aio_pika.Message(
        orjson.dumps({"n": n}),
        message_id=f"m{n}",
        correlation_id=f"c{n}",
        content_type="application/cloudevents+json",
        headers={"aifi_attempts": 5, "aifi_reason": f"Reject: {n}", "aifi_store_id": n},
        timestamp=STAMP,
        type="aifi.entered",
        app_id="aifi-gateway",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def assert_intact(found: list[AbstractIncomingMessage], numbers: range) -> None:
    assert [m.message_id for m in found] == [f"m{n}" for n in numbers]  # all, in order
    for n, got in zip(numbers, found, strict=True):
        sent = message(n)
        assert got.body == sent.body
        assert got.headers == sent.headers
        assert (got.correlation_id, got.content_type, got.type, got.app_id) == (
            f"c{n}",
            "application/cloudevents+json",
            "aifi.entered",
            "aifi-gateway",
        )
        assert got.timestamp == STAMP


@pytest.fixture
async def old_dead_queue(
    channel: AbstractChannel, scratch: Scratch, store: int
) -> AsyncIterator[tuple[str, ConsumerSettings]]:
    """A consumer whose dead-letter queue an earlier release declared; its holding queue is
    deleted afterwards, whatever the test left."""
    name, settings = scratch.consumer(f"entered.{store}")
    await declare_exchanges(channel)
    old = await channel.declare_queue(
        dead_queue_name(name), durable=True, arguments=OLD_DEAD_ARGUMENTS
    )
    await old.bind(DEAD_EXCHANGE, name)
    yield name, settings
    await channel.queue_delete(dead_queue_name(name) + HOLDING_SUFFIX)


async def bury(channel: AbstractChannel, name: str, numbers: range) -> None:
    dead = await channel.get_exchange(DEAD_EXCHANGE)
    await asyncio.gather(*(dead.publish(message(n), name) for n in numbers))


async def exists(url: str, queue: str) -> bool:
    async with connected(url) as channel:  # a channel of its own: a 404 closes it
        try:
            await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
    return True


async def test_old_arguments_are_replaced_and_every_message_is_kept(
    amqp_url: str, channel: AbstractChannel, old_dead_queue: tuple[str, ConsumerSettings]
) -> None:
    name, settings = old_dead_queue
    count = 600  # more than one confirmed chunk
    await bury(channel, name, range(count))
    amqp = AmqpSettings(urls=(amqp_url,))
    async with connected(amqp_url) as other:
        with pytest.raises(TopologyError, match="aifi-consumer migrate"):
            await topology.declare(other, name, settings)
    assert await migrate(amqp, {name: settings}) == {dead_queue_name(name): count}
    # The queues that did not exist are not made; those that differed now match.
    await topology.declare(channel, name, settings)
    assert_intact(await broker.drain(channel, dead_queue_name(name)), range(count))
    assert not await exists(amqp_url, dead_queue_name(name) + HOLDING_SUFFIX)
    await bury(channel, name, range(1))  # the binding was applied again
    await eventually(lambda: depth_is(channel, dead_queue_name(name), 1), what="routing")
    assert await migrate(amqp, {name: settings}) == {}  # nothing differs any more


async def depth_is(channel: AbstractChannel, queue: str, count: int) -> bool:
    return await broker.depth(channel, queue) == count


@pytest.mark.parametrize("old_queue_gone", [False, True], ids=["mid-move", "old-queue-gone"])
async def test_a_migration_interrupted_is_finished_by_running_it_again(
    amqp_url: str,
    channel: AbstractChannel,
    old_dead_queue: tuple[str, ConsumerSettings],
    old_queue_gone: bool,
) -> None:
    name, settings = old_dead_queue
    holding = await channel.declare_queue(
        dead_queue_name(name) + HOLDING_SUFFIX, durable=True, arguments=HOLDING_ARGUMENTS
    )
    await asyncio.gather(
        *(channel.default_exchange.publish(message(n), holding.name) for n in range(3))
    )
    if old_queue_gone:
        await channel.queue_delete(dead_queue_name(name))
        moved = range(3)
    else:
        await bury(channel, name, range(3, 7))
        moved = range(7)
    amqp = AmqpSettings(urls=(amqp_url,))
    assert await migrate(amqp, {name: settings}) == {dead_queue_name(name): len(moved)}
    await topology.declare(channel, name, settings)
    assert_intact(await broker.drain(channel, dead_queue_name(name)), moved)
    assert not await exists(amqp_url, holding.name)


async def test_a_queue_with_consumers_is_not_migrated(
    amqp_url: str, channel: AbstractChannel, old_dead_queue: tuple[str, ConsumerSettings]
) -> None:
    """A worker still running holds messages unacked: they would go with the old queue."""
    name, settings = old_dead_queue
    await bury(channel, name, range(2))
    async with connected(amqp_url) as other:
        queue = await other.get_queue(dead_queue_name(name))
        await queue.consume(hold)
        with pytest.raises(MigrationError, match="stop its workers"):
            await migrate(AmqpSettings(urls=(amqp_url,)), {name: settings})
    assert not await exists(amqp_url, dead_queue_name(name) + HOLDING_SUFFIX)
    assert await broker.depth(channel, dead_queue_name(name)) == 2  # given back, untouched


async def hold(_: AbstractIncomingMessage) -> None:
    """A worker that never settles."""


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(url)
    async with connection, connection.channel() as channel:
        yield channel


async def test_the_migrate_command_prints_what_it_moved(
    amqp_url: str,
    channel: AbstractChannel,
    old_dead_queue: tuple[str, ConsumerSettings],
    tmp_path: Path,
) -> None:
    name, settings = old_dead_queue
    await bury(channel, name, range(2))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"consumers": {name: settings.model_dump(mode="json")}}))
    process = await asyncio.create_subprocess_exec(
        str(BIN / CONSUMER_COMMAND[0]),
        *CONSUMER_COMMAND[1:],
        "migrate",
        name,
        cwd=ROOT,
        env=child_environ() | {"AIFI_AMQP_URL": amqp_url, "AIFI_CONFIG": str(config)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr
    assert orjson.loads(stdout) == {"migrated": {dead_queue_name(name): 2}}
    await topology.declare(channel, name, settings)
    assert await broker.depth(channel, dead_queue_name(name)) == 2
