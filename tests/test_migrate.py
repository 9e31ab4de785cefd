"""Migration: a queue declared with an earlier release's arguments gets this release's,
and keeps every message, also when a run was interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
from core import contract, topology as core_topology
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


# Main and delay queues: long delays, so that nothing expires from a delay queue mid-test.
SLOW_RETRIES = ConsumerSettings(max_attempts=3, retry_base_ms=600_000, retry_max_ms=1_200_000)
# What makes each queue differ from this release's: a bound an earlier release had set.
OLD_EXTRA: dict[str, Any] = {"x-max-length": 1_000_000}
MIGRATION_TIMEOUT_S = 120


@pytest.fixture
async def old_queues(
    channel: AbstractChannel, scratch: Scratch, store: int
) -> AsyncIterator[tuple[str, ConsumerSettings, list[core_topology.QueueSpec]]]:
    """A consumer bound with two keys whose main, dead and delay queues an earlier release
    declared with other arguments (and the same bindings); holding queues deleted after."""
    name, _ = scratch.consumer()
    bound = SLOW_RETRIES.model_copy(update={"bindings": (f"entered.{store}", f"exited.{store}")})
    specs = core_topology.queue_specs(name, bound)
    await declare_exchanges(channel)
    for spec in specs:
        old = await channel.declare_queue(
            spec.name, durable=True, arguments=spec.arguments | OLD_EXTRA
        )
        for exchange, key in spec.bindings:
            await old.bind(exchange, key)
    yield name, bound, specs
    for spec in specs:
        await channel.queue_delete(spec.name + HOLDING_SUFFIX)


async def publish_via(
    channel: AbstractChannel, exchange: str, keys: list[str], numbers: range
) -> None:
    """Message n through `exchange` with key n (of `keys`, in turn): order kept per queue."""
    target = await channel.get_exchange(exchange)
    await asyncio.gather(*(target.publish(message(n), keys[n % len(keys)]) for n in numbers))


async def test_main_and_delay_queues_keep_their_messages_and_every_binding(
    amqp_url: str,
    channel: AbstractChannel,
    old_queues: tuple[str, ConsumerSettings, list[core_topology.QueueSpec]],
) -> None:
    name, settings, specs = old_queues
    main, _dead, *delays = specs
    assert len(delays) == 2
    assert len(main.bindings) == 3  # two keys and the redeliveries
    keys = [key for exchange, key in main.bindings if exchange == contract.EXCHANGE]
    await publish_via(channel, contract.EXCHANGE, keys, range(300))
    for index, delay in enumerate(delays):
        [(exchange, key)] = delay.bindings
        await publish_via(channel, exchange, [key], range(1000 * index, 1000 * index + 100))
    moved = await migrate(AmqpSettings(urls=(amqp_url,)), {name: settings})
    assert moved == {main.name: 300, specs[1].name: 0, delays[0].name: 100, delays[1].name: 100}
    await topology.declare(channel, name, settings)  # the arguments now match
    assert_intact(await broker.drain(channel, main.name), range(300))
    for index, delay in enumerate(delays):
        assert_intact(
            await broker.drain(channel, delay.name), range(1000 * index, 1000 * index + 100)
        )
    # Every binding came back: one message through each lands in its queue again.
    for n, (exchange, key) in enumerate(b for spec in specs for b in spec.bindings):
        await publish_via(channel, exchange, [key], range(n, n + 1))
    for spec in specs:
        count = len(spec.bindings)
        await eventually(functools.partial(depth_is, channel, spec.name, count), what=spec.name)


async def test_what_is_published_during_a_migration_is_all_in_the_queue_after(
    amqp_url: str,
    channel: AbstractChannel,
    old_queues: tuple[str, ConsumerSettings, list[core_topology.QueueSpec]],
) -> None:
    """The "never a gap" promise: the holding queue is bound before the old queue goes."""
    name, settings, specs = old_queues
    keys = [key for exchange, key in specs[0].bindings if exchange == contract.EXCHANGE]
    await publish_via(channel, contract.EXCHANGE, keys, range(1000))  # a move that lasts
    done = asyncio.Event()
    published: list[int] = []

    async def publish_until_done() -> None:
        async with connected(amqp_url) as other:
            exchange = await other.get_exchange(contract.EXCHANGE)
            n = 10_000
            while not done.is_set() or len(published) < 50:
                await exchange.publish(message(n), keys[n % 2])  # confirmed, one at a time
                published.append(n)
                n += 1
                await asyncio.sleep(0.005)  # a steady stream, not a flood

    publishing = asyncio.create_task(publish_until_done())
    try:
        async with asyncio.timeout(MIGRATION_TIMEOUT_S):  # a move that chases a stream hangs
            await migrate(AmqpSettings(urls=(amqp_url,)), {name: settings})
    finally:
        done.set()
        await publishing
    found = [m.message_id for m in await broker.drain(channel, specs[0].name, timeout_s=60)]
    # At worst a duplicate, never a gap.
    assert {f"m{n}" for n in [*range(1000), *published]} <= set(found)
