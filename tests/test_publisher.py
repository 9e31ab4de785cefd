"""The publisher against the real broker: one write, a confirm per message, each settled apart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractChannel

from devtools.rabbitnode import free_port
from gateway import contract
from gateway.contract import Outbound
from gateway.publisher import Publisher, PublishError, Unencodable, connect_first
from gateway.settings import AmqpSettings
from tests.support import Capture, capturable


def outbound(n: int, routing_key: str = "invalid.entered", content_type: str = "x") -> Outbound:
    return capturable(f"pub-{n}", routing_key, content_type)


@pytest.fixture
async def publisher(amqp_url: str) -> AsyncIterator[Publisher]:
    publisher = Publisher(AmqpSettings(urls=(amqp_url,)))
    task = asyncio.create_task(publisher.run())
    await asyncio.wait_for(publisher.wait_ready(), 10)
    yield publisher
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_batch_is_confirmed_message_by_message_and_arrives_in_order(
    publisher: Publisher, capture: Capture
) -> None:
    confirmations = await publisher.write([outbound(n) for n in range(50)])
    await asyncio.wait(confirmations)
    for confirmation in confirmations:
        publisher.check(confirmation)
    received = [(await capture.get()).message_id for _ in range(50)]
    assert received == [f"pub-{n}" for n in range(50)]


async def test_an_unencodable_message_fails_alone(publisher: Publisher, capture: Capture) -> None:
    batch = [outbound(0), outbound(1, content_type="t" * 300), outbound(2)]
    first, bad, last = await publisher.write(batch)
    await asyncio.wait([first, last])
    with pytest.raises(Unencodable, match="255"):
        publisher.check(bad)
    publisher.check(first)
    publisher.check(last)
    assert [(await capture.get()).message_id for _ in range(2)] == ["pub-0", "pub-2"]


@pytest.fixture
async def refusing_key(channel: AbstractChannel) -> AsyncIterator[str]:
    """A routing key whose only queue is full and refuses: the broker nacks what it gets."""
    key = f"refused.{uuid.uuid4().hex}"
    queue = await channel.declare_queue(
        f"test.{key}", durable=False, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    await queue.bind(contract.EXCHANGE, key)
    yield key
    await queue.delete(if_unused=False, if_empty=False)


async def test_a_nack_is_a_publish_error_and_later_messages_still_go(
    publisher: Publisher, refusing_key: str, capture: Capture
) -> None:
    with pytest.raises(PublishError, match="DeliveryError"):
        await publisher.send(outbound(0, routing_key=refusing_key))
    await publisher.send(outbound(1))
    # A nack says a queue refused it, not that none took it: `capture` (on `#`) did.
    assert {(await capture.get()).message_id for _ in range(2)} == {"pub-0", "pub-1"}


async def test_a_lost_connection_settles_every_pending_confirm_then_reconnects(
    publisher: Publisher, capture: Capture
) -> None:
    confirmations = await publisher.write([outbound(n) for n in range(200)])
    underlay = publisher._channel  # the fault is this test's subject
    assert underlay is not None
    await underlay.connection.close()
    await asyncio.wait(confirmations, timeout=10)
    assert all(c.done() for c in confirmations), "a lost connection leaves no confirm pending"
    await asyncio.wait_for(publisher.send(outbound(999)), 10)
    assert publisher.reconnects == 1


async def test_connect_first_tries_each_url_and_fails_clearly_when_none_answers() -> None:
    dead = [f"amqp://guest:guest@127.0.0.1:{free_port()}/" for _ in range(2)]
    with pytest.raises(ConnectionError, match="no broker answered at 2 URL"):
        await connect_first(dead, timeout_s=2)
