"""Settlement headers and copies: what a retry, a dead letter and a replay carry."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import cast

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from consumers import topology
from consumers.handler import Reject, RetryLater
from consumers.settlement import (
    MAX_REASON_CHARS,
    Settler,
    copy,
    describe,
    failed_copy,
    failures,
    replay_copy,
)
from consumers.state import ConsumerState
from consumers.topology import Topology
from core.contract import (
    ATTEMPTS_HEADER,
    FAILED_AT_HEADER,
    REASON_HEADER,
    REDELIVER_EXCHANGE,
    REPLAYS_HEADER,
    queue_name,
)
from core.settings import ConsumerSettings
from tests.support import broker
from tests.support.consumer import Scratch
from tests.support.waiting import eventually


@pytest.fixture
async def received(
    amqp_url: str, channel: AbstractChannel
) -> AsyncIterator[AbstractIncomingMessage]:
    """A message as a worker receives it, with our headers and the broker's."""
    scratch = Scratch(amqp_url, ConsumerSettings(delivery_limit=5))
    store = random.randrange(10**6, 10**9)
    name, settings = scratch.consumer(f"entered.{store}")
    await topology.declare(channel, name, settings)
    exchange = await channel.get_exchange(REDELIVER_EXCHANGE)
    await exchange.publish(
        aio_pika.Message(
            b'{"x": 1}',
            message_id="m-1",
            content_type="application/cloudevents+json",
            correlation_id="c-1",
            headers={
                ATTEMPTS_HEADER: 4,
                REASON_HEADER: "RetryLater: down",
                FAILED_AT_HEADER: "t",
                "aifi_store_id": store,
                "x-first-death-reason": "expired",
                "x-acquired-count": 3,  # RabbitMQ 4.3's; any x- header is the broker's
                "x-death": [{"reason": "expired"}],
            },
        ),
        name,
    )
    queue = await channel.get_queue(queue_name(name))
    await eventually(lambda: waiting(channel, queue.name), what="routing")
    first = await queue.get()
    await first.reject(requeue=True)  # so that the broker adds x-delivery-count
    message = await queue.get()
    yield message
    await message.ack()
    await scratch.delete()


async def waiting(channel: AbstractChannel, queue: str) -> bool:
    return await broker.depth(channel, queue) > 0


def test_describe_names_the_exception_and_is_bounded() -> None:
    assert describe(RetryLater("downstream is down")) == "RetryLater: downstream is down"
    assert describe(Reject()) == "Reject"
    assert describe(KeyError("sessionId")) == "KeyError: 'sessionId'"
    assert len(describe(ValueError("x" * 5000))) == MAX_REASON_CHARS


async def test_failures_come_from_our_header_only(received: AbstractIncomingMessage) -> None:
    assert failures(received) == 4
    received.headers[ATTEMPTS_HEADER] = "4"
    assert failures(received) == 0
    del received.headers[ATTEMPTS_HEADER]
    assert failures(received) == 0


async def test_a_copy_keeps_body_and_properties(received: AbstractIncomingMessage) -> None:
    duplicate = copy(received, {"h": 1})
    assert duplicate.body == received.body
    assert (duplicate.message_id, duplicate.correlation_id) == ("m-1", "c-1")
    assert duplicate.content_type == "application/cloudevents+json"
    assert duplicate.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert duplicate.headers == {"h": 1}


async def test_a_replayed_copy_starts_afresh_and_counts_its_replays(
    received: AbstractIncomingMessage,
) -> None:
    assert received.headers["x-delivery-count"] == 1
    fresh = replay_copy(received)
    assert fresh.headers == {"aifi_store_id": received.headers["aifi_store_id"], REPLAYS_HEADER: 1}
    received.headers[REPLAYS_HEADER] = 1
    assert replay_copy(received).headers[REPLAYS_HEADER] == 2


async def test_a_failed_copy_carries_our_headers_and_none_of_the_brokers(
    received: AbstractIncomingMessage,
) -> None:
    assert {"x-delivery-count", "x-acquired-count", "x-death"} <= set(received.headers)
    failed = failed_copy(received, 5, "RetryLater: still down")
    assert failed.headers is not None
    assert [k for k in failed.headers if k.startswith("x-")] == []
    assert failed.headers["aifi_store_id"] == received.headers["aifi_store_id"]
    assert (failed.headers[ATTEMPTS_HEADER], failed.headers[REASON_HEADER]) == (
        5,
        "RetryLater: still down",
    )
    assert (failed.body, failed.message_id) == (received.body, "m-1")


class FakeDelivery:
    """Just what `Settler.ack_all` touches: a delivery tag and `ack`."""

    def __init__(self, delivery_tag: int) -> None:
        self.delivery_tag = delivery_tag
        self.acks: list[bool] = []

    async def ack(self, multiple: bool = False) -> None:
        self.acks.append(multiple)


async def test_a_batch_is_acked_in_one_frame_only_when_nothing_older_is_unsettled() -> None:
    state = ConsumerState("t")
    settler = Settler("t", ConsumerSettings(), cast(Topology, None), state, 1.0)
    deliveries = [FakeDelivery(n) for n in range(1, 6)]
    messages = cast(list[AbstractIncomingMessage], deliveries)
    for message in messages:
        settler.received(message)
    await settler.ack_all(messages[2:4])  # 1 and 2 still in hand: one ack each
    assert [d.acks for d in deliveries] == [[], [], [False], [False], []]
    await settler.ack_all(messages[:2])  # nothing older left: one multiple ack, on 2
    assert [d.acks for d in deliveries] == [[], [True], [False], [False], []]
    assert state.acked == 4
