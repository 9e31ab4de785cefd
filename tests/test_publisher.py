"""The publisher against the real broker: one write, a confirm per message, settled per ack
frame, each message with its own outcome."""

from __future__ import annotations

import ast
import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Final

import aiormq
import pytest
from aio_pika.abc import AbstractChannel

from core import contract
from core.amqp import connect_first, declare_topology
from core.contract import Outbound, queue_name
from core.settings import AmqpSettings
from core.topology import queue_specs
from devtools.rabbitnode import free_port
from gateway.publisher import (
    AIORMQ_INTERNALS,
    UNBLOCKED_EVENT,
    Outcomes,
    Publisher,
    PublishError,
    Unencodable,
)
from tests.support import broker
from tests.support.broker import Capture, capturable
from tests.support.consumer import Scratch
from tests.support.silent import SilentNode


def outbound(n: int, routing_key: str = "invalid.entered", content_type: str = "x") -> Outbound:
    return capturable(f"pub-{n}", routing_key, content_type)


@pytest.fixture
async def publisher(amqp_url: str) -> AsyncIterator[Publisher]:
    async with Publisher(AmqpSettings(urls=(amqp_url,)), {}) as publisher:
        await asyncio.wait_for(publisher.wait_ready(), 10)
        yield publisher


class Settled:
    """The outcomes `Publisher.write` reports, by token, and how many calls reported them."""

    def __init__(self) -> None:
        self.outcomes: dict[int, PublishError | None] = {}
        self.calls = 0
        self.changed = asyncio.Event()

    def __call__(self, outcomes: Outcomes[int]) -> None:
        self.calls += 1
        for token, error in outcomes:
            assert token not in self.outcomes, f"message {token} settled twice"
            self.outcomes[token] = error
        self.changed.set()

    async def wait(self, count: int, timeout_s: float = 10) -> list[PublishError | None]:
        async with asyncio.timeout(timeout_s):
            while len(self.outcomes) < count:
                self.changed.clear()
                await self.changed.wait()
        return [self.outcomes[n] for n in range(count)]


async def written(publisher: Publisher, outbounds: list[Outbound]) -> Settled:
    settled = Settled()
    await publisher.write([(o, n) for n, o in enumerate(outbounds)], settled)
    return settled


async def send(publisher: Publisher, message: Outbound) -> None:
    [error] = await (await written(publisher, [message])).wait(1)
    if error is not None:
        raise error


async def test_a_batch_is_confirmed_message_by_message_and_arrives_in_order(
    publisher: Publisher, capture: Capture
) -> None:
    settled = await written(publisher, [outbound(n) for n in range(50)])
    assert await settled.wait(50) == [None] * 50
    received = [(await capture.get()).message_id for _ in range(50)]
    assert received == [f"pub-{n}" for n in range(50)]


async def test_confirms_are_settled_per_ack_frame_not_per_message(
    publisher: Publisher, capture: Capture
) -> None:
    settled = await written(publisher, [outbound(n) for n in range(500)])
    assert await settled.wait(500) == [None] * 500
    # The broker acks a burst with few frames (multiple=True); one call settles each.
    assert settled.calls < 500
    underlay = publisher._channel  # the bookkeeping in aiormq's channel is this test's subject
    assert underlay is not None
    assert (underlay.confirmations, underlay.message_id_delivery_tag) == ({}, {})


async def test_an_unencodable_message_fails_alone(publisher: Publisher, capture: Capture) -> None:
    batch = [outbound(0), outbound(1, content_type="t" * 300), outbound(2)]
    first, bad, last = await (await written(publisher, batch)).wait(3)
    assert isinstance(bad, Unencodable)
    assert "255" in str(bad)
    assert (first, last) == (None, None)
    assert [(await capture.get()).message_id for _ in range(2)] == ["pub-0", "pub-2"]


@pytest.fixture
async def refusing_key(channel: AbstractChannel) -> AsyncIterator[str]:
    """A routing key whose only queue is full and refuses: the broker nacks what it gets."""
    key = f"refused.{uuid.uuid4().hex}"
    queue = await channel.declare_queue(
        f"test.{key}", exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    await queue.bind(contract.EXCHANGE, key)
    yield key
    await queue.delete(if_unused=False, if_empty=False)


async def test_a_nack_is_a_publish_error_and_later_messages_still_go(
    publisher: Publisher, refusing_key: str, capture: Capture
) -> None:
    with pytest.raises(PublishError, match="DeliveryError"):
        await send(publisher, outbound(0, routing_key=refusing_key))
    await send(publisher, outbound(1))
    # A nack says a queue refused it, not that none took it: `capture` (on `#`) did.
    assert {(await capture.get()).message_id for _ in range(2)} == {"pub-0", "pub-1"}


async def test_a_nack_in_a_batch_fails_only_its_own_message(
    publisher: Publisher, refusing_key: str, capture: Capture
) -> None:
    batch = [
        outbound(n, routing_key=refusing_key if n == 5 else "invalid.entered") for n in range(10)
    ]
    outcomes = await (await written(publisher, batch)).wait(10)
    assert [n for n, error in enumerate(outcomes) if error is not None] == [5]
    assert "DeliveryError" in str(outcomes[5])


async def test_a_returned_message_fails_alone_among_confirmed_ones(
    publisher: Publisher, channel: AbstractChannel
) -> None:
    """Without the alternate exchange an event nothing binds is returned, then acked:
    the ack of its batch must not settle it as safe."""
    key = f"kept.{uuid.uuid4().hex}"
    queue = await channel.declare_queue(f"test.{key}", exclusive=True)
    await queue.bind(contract.EXCHANGE, key)
    await channel.exchange_delete(contract.UNROUTED_EXCHANGE)
    try:
        batch = [outbound(n, routing_key=key if n != 3 else "nobody.binds") for n in range(6)]
        outcomes = await (await written(publisher, batch)).wait(6)
    finally:
        await declare_topology(channel)
    assert [n for n, error in enumerate(outcomes) if error is not None] == [3]
    assert "returned" in str(outcomes[3])
    assert publisher.returns == 1


async def test_a_lost_connection_settles_every_pending_confirm_then_reconnects(
    publisher: Publisher, capture: Capture
) -> None:
    settled = await written(publisher, [outbound(n) for n in range(200)])
    underlay = publisher._channel  # the fault is this test's subject
    assert underlay is not None
    await underlay.connection.close()
    await settled.wait(200)  # a lost connection leaves no confirm pending
    await asyncio.wait_for(send(publisher, outbound(999)), 10)
    assert publisher.reconnects == 1


async def test_the_consumers_queues_are_declared_before_the_publisher_is_ready(
    amqp_url: str, scratch: Scratch, channel: AbstractChannel, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    async with Publisher(AmqpSettings(urls=(amqp_url,)), {name: settings}) as publisher:
        await asyncio.wait_for(publisher.wait_ready(), 10)
        await send(publisher, outbound(1, routing_key=f"entered.{store}"))
    assert await broker.depth(channel, queue_name(name)) == 1
    # Every queue of the consumer as its worker declares it (other arguments, or a missing
    # queue, would close the channel).
    for spec in queue_specs(name, settings):
        await channel.declare_queue(spec.name, passive=True)
        await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)


def test_the_aiormq_internals_the_publisher_relies_on_are_there() -> None:
    """aiormq is pinned to 7.2.x; a new version must keep what `Confirms` takes over."""
    init = inspect.getsource(aiormq.Channel.__init__)
    for name in AIORMQ_INTERNALS[:-1]:
        assert f"self.{name}" in init, name
    reader = inspect.getsource(aiormq.Channel._reader)
    assert f"await self.{AIORMQ_INTERNALS[-1]}(frame)" in reader
    returns = inspect.getsource(aiormq.Channel._on_return_frame)
    assert "self.message_id_delivery_tag.get(message_id)" in returns
    assert "self.confirmations.pop(delivery_tag, None)" in returns
    # The blocked state the publisher reads before it leaves a node for overdue confirms.
    blocked = inspect.getsource(aiormq.Connection)
    assert f"self.{UNBLOCKED_EVENT.removeprefix('_Connection')}.clear()" in blocked


async def test_connect_first_tries_each_url_and_fails_clearly_when_none_answers() -> None:
    dead = [f"amqp://guest:guest@127.0.0.1:{free_port()}/" for _ in range(2)]
    with pytest.raises(ConnectionError, match="no broker answered at 2 URL"):
        await connect_first(dead, timeout_s=2)


async def test_a_node_holding_declarations_is_left_for_the_next_url(
    amqp_url: str, capture: Capture
) -> None:
    silent = SilentNode()
    async with silent.serving() as silent_url:
        settings = AmqpSettings(urls=(silent_url, amqp_url), declare_timeout_s=0.5)
        async with Publisher(settings, {}) as publisher:
            # Without a bound on the declaration, the publisher would wait on the first URL forever.
            await asyncio.wait_for(publisher.wait_ready(), 15)
            await asyncio.wait_for(send(publisher, outbound(7)), 10)
    assert silent.declarations == 1, "the silent node was tried first and held a declaration"
    assert publisher.reconnects == 1
    assert (await capture.get()).message_id == "pub-7"


ROOT: Final = Path(__file__).resolve().parents[1]
QUEUE_DECLARATIONS: Final = {"declare_queue", "queue_declare"}
# Any one of these makes a declaration RabbitMQ 4.3 accepts by default.
ACCEPTED_FLAGS: Final = {"durable", "exclusive", "passive"}


def queue_declarations(root: Path) -> Iterator[tuple[str, ast.Call]]:
    """("path:line", call) of every queue declaration in the project's Python files."""
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts[0] == "node_modules" or any(part.startswith(".") for part in parts):
            continue  # virtualenvs, caches, node data, npm tools
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in QUEUE_DECLARATIONS:
                yield f"{path.relative_to(root)}:{node.lineno}", node


def accepted_by_4_3(call: ast.Call) -> bool:
    """Durable, exclusive or passive, written as `True` where the call is made.

    Both clients default to transient and shared, a combination RabbitMQ 4.3 denies
    by default (deprecated feature `transient_nonexcl_queues`) by closing the connection.
    """
    flags = {k.arg for k in call.keywords if isinstance(k.value, ast.Constant) and k.value.value}
    return len(call.args) <= 1 and bool(flags & ACCEPTED_FLAGS)


def test_every_queue_the_project_declares_is_durable_exclusive_or_passive() -> None:
    # RabbitMQ 3.10, which the tests run on, has no deprecated features to deny: read the code.
    declarations = dict(queue_declarations(ROOT))
    assert any(where.startswith("core/amqp.py") for where in declarations)
    refused = [where for where, call in declarations.items() if not accepted_by_4_3(call)]
    assert refused == [], "transient non-exclusive queues, refused by RabbitMQ 4.3"
