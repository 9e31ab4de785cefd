"""Per-consumer queues on the real broker: bindings, delay queues, delivery limit, names."""

from __future__ import annotations

import uuid

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from consumers import testing, topology
from core import contract
from core.amqp import UNROUTED_ARGUMENTS
from core.contract import DEAD_EXCHANGE, DELAY_EXCHANGE, dead_queue_name, queue_name
from core.settings import ConsumerSettings
from core.topology import (
    DEAD_ARGUMENTS,
    TopologyError,
    backoff_ms,
    bindings,
    delay_key,
    delays_ms,
    main_arguments,
)
from tests.support import broker
from tests.support.consumer import Scratch
from tests.support.waiting import eventually

BASE = ConsumerSettings(max_attempts=3, retry_base_ms=50, retry_max_ms=100, delivery_limit=2)


@pytest.fixture
def consumer_base() -> ConsumerSettings:
    """The settings `scratch` makes this module's consumers from."""
    return BASE


def test_one_delay_queue_per_distinct_backoff_step() -> None:
    assert delays_ms(ConsumerSettings()) == [1000, 2000, 4000, 8000]
    capped = ConsumerSettings(max_attempts=6, retry_base_ms=1000, retry_max_ms=3000)
    assert delays_ms(capped) == [1000, 2000, 3000]
    assert [backoff_ms(capped, n) for n in range(1, 6)] == [1000, 2000, 3000, 3000, 3000]
    assert delays_ms(ConsumerSettings(max_attempts=1)) == []


def test_names_that_would_read_as_routing_key_parts_are_refused() -> None:
    assert topology.check_name("entered") == "entered"
    assert topology.check_name("store-42_v2") == "store-42_v2"
    for bad in ("a.b", "", "a b", "a#"):
        with pytest.raises(ValueError, match="must match"):
            topology.check_name(bad)


def test_the_main_queue_dead_letters_at_least_once() -> None:
    arguments = main_arguments("entered", ConsumerSettings(delivery_limit=7))
    assert arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 7,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        "x-dead-letter-routing-key": "entered",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


async def test_declaring_twice_is_harmless_and_bindings_select_the_events(
    channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    await topology.declare(channel, name, settings)
    await topology.declare(channel, name, settings)
    await broker.publish(
        channel,
        [
            testing.transition("entered", store, "s1"),
            testing.transition("exited", store, "s1"),
            testing.transition("entered", store + 1, "s2"),
        ],
    )
    await eventually(lambda: depth_is(channel, queue_name(name), 1), what="routing")
    message = await (await channel.get_queue(queue_name(name))).get()
    assert message.routing_key == f"entered.{store}"
    await message.ack()


async def test_the_default_binding_is_the_name_followed_by_anything(
    channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    name, settings = scratch.consumer()
    assert bindings(name, settings) == (f"{name}.#",)
    await topology.declare(channel, name, settings)
    exchange = await channel.get_exchange("aifi.events")
    await exchange.publish(aio_pika.Message(b"x"), f"{name}.{store}")
    await eventually(lambda: depth_is(channel, queue_name(name), 1), what="routing")


async def test_a_delayed_message_comes_back_to_its_own_queue_only(
    channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    """Both consumers bind the same key: a retry must reach the one that failed it, only."""
    (mine, settings), (other, _) = (scratch.consumer(f"entered.{store}") for _ in range(2))
    for name in (mine, other):
        await topology.declare(channel, name, settings)
    delay = await channel.get_exchange(DELAY_EXCHANGE)
    await delay.publish(aio_pika.Message(b"x", message_id="m1"), delay_key(mine, 50))
    assert await broker.depth(channel, queue_name(mine)) == 0  # not before its delay
    await eventually(lambda: depth_is(channel, queue_name(mine), 1), what="the retry")
    assert await broker.depth(channel, queue_name(other)) == 0


async def test_the_delivery_limit_sends_a_message_to_the_dead_letter_queue(
    channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")  # delivery limit 2
    await topology.declare(channel, name, settings)
    await broker.publish(channel, [testing.transition("entered", store, "s1")])
    queue = await channel.get_queue(queue_name(name))
    await eventually(lambda: depth_is(channel, queue_name(name), 1), what="routing")
    for _ in range(3):
        message = await queue.get()
        await message.reject(requeue=True)
    await eventually(lambda: depth_is(channel, dead_queue_name(name), 1), what="death")
    dead = await (await channel.get_queue(dead_queue_name(name))).get()
    assert dead.headers["x-first-death-reason"] == "delivery_limit"
    await dead.ack()


async def test_changed_queue_arguments_are_a_clear_error(
    amqp_url: str, channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    await topology.declare(channel, name, settings)
    changed = settings.model_copy(update={"delivery_limit": 5})
    connection = await aio_pika.connect(amqp_url)
    async with connection, connection.channel() as other:
        with pytest.raises(TopologyError, match=f"queue aifi.{name} exists with other arguments"):
            await topology.declare(other, name, changed)


async def depth_is(channel: AbstractChannel, queue: str, count: int) -> bool:
    return await broker.depth(channel, queue) == count


RETURNS = 25  # past RabbitMQ 4.x's default delivery limit of 20


async def return_repeatedly(channel: AbstractChannel, queue: str, times: int) -> None:
    """Take the head message and give it back (reject with requeue), `times` times."""
    source = await channel.get_queue(queue)
    for _ in range(times):
        message = await source.get(timeout=5)
        await message.reject(requeue=True)


async def test_a_dead_letter_returned_many_times_is_kept(
    channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    """A failed replay or an operator peeking with requeue returns a dead letter; RabbitMQ
    4.x deletes it past 20 returns unless the queue states its own limit."""
    name, settings = scratch.consumer(f"entered.{store}")
    await topology.declare(channel, name, settings)
    dead = await channel.get_exchange(DEAD_EXCHANGE)
    await dead.publish(aio_pika.Message(b"x", message_id="d1"), name)
    await return_repeatedly(channel, dead_queue_name(name), RETURNS)
    kept = await (await channel.get_queue(dead_queue_name(name))).get(timeout=5)
    assert (kept.message_id, kept.headers["x-delivery-count"]) == ("d1", RETURNS)
    await kept.ack()
    # The queue holds the limit: a declare with the arguments the code states is equivalent.
    await channel.declare_queue(dead_queue_name(name), durable=True, arguments=DEAD_ARGUMENTS)
    assert DEAD_ARGUMENTS["x-delivery-limit"] > RETURNS


async def test_unrouted_events_are_kept_however_often_they_are_returned(
    channel: AbstractChannel,
) -> None:
    # `aifi.unrouted` is shared, so the returns go to a queue of this test's own with its
    # arguments; the shared one is shown to hold the same arguments.
    await channel.declare_queue(contract.UNROUTED_QUEUE, durable=True, arguments=UNROUTED_ARGUMENTS)
    name = f"test.unrouted.{uuid.uuid4().hex}"
    arguments = UNROUTED_ARGUMENTS | {"x-expires": 60_000}
    queue = await channel.declare_queue(name, durable=True, arguments=arguments)
    try:
        await channel.default_exchange.publish(aio_pika.Message(b"u", message_id="u1"), name)
        await return_repeatedly(channel, name, RETURNS)
        kept = await queue.get(timeout=5)
        assert kept.message_id == "u1"
        await kept.ack()
    finally:
        await queue.delete(if_unused=False, if_empty=False)
