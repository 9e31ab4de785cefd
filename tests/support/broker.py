"""The tests' side of the broker: publishing events as the gateway does, reading queues,
and capturing what a test gateway sends."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from core import contract
from core.contract import EXCHANGE, Event, Outbound
from devtools.rabbitnode import Node, NodeSpec, free_port
from gateway.app import PIPELINE
from tests.support.gateway import TOKEN_NAME, Client
from tests.support.waiting import eventually

PUBLISH_CHUNK: Final = 1000
# A key no consumer binds: only queues bound to `#` see the marker.
MARKER_ROUTING_KEY: Final = "test.capture-marker"


@contextlib.contextmanager
def started_node(base: Path) -> Iterator[Node]:
    """A RabbitMQ node on free ports, its data under `base`, SIGKILLed at the end."""
    node = Node(NodeSpec(f"t-{uuid.uuid4().hex[:8]}", free_port(), free_port(), base))
    node.start(timeout_s=120)
    try:
        yield node
    finally:
        node.kill()


def message(outbound: Outbound) -> aio_pika.Message:
    """The AMQP message the gateway sends for `outbound`. The gateway writes its frames by
    hand (`gateway.frames`); tests/test_frames.py checks they are, byte for byte, the frames
    aio-pika writes for this message, so events published here are the gateway's own."""
    sent = aio_pika.Message(
        outbound.body,
        message_id=outbound.message_id,
        content_type=outbound.content_type,
        timestamp=datetime.fromtimestamp(outbound.timestamp_s, UTC),
        headers=dict(outbound.headers),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    # aio-pika sets a priority of 0 when given none; the gateway sets no priority at all.
    sent.priority = None
    return sent


async def publish(channel: AbstractChannel, outbounds: Iterable[Outbound]) -> None:
    """Publish to the events exchange, confirmed, pipelined a chunk at a time."""
    exchange = await channel.get_exchange(EXCHANGE)
    for chunk in _chunks(outbounds):
        await asyncio.gather(*(exchange.publish(message(o), o.routing_key) for o in chunk))


def _chunks(outbounds: Iterable[Outbound]) -> Iterable[list[Outbound]]:
    iterator = iter(outbounds)
    while chunk := list(itertools.islice(iterator, PUBLISH_CHUNK)):
        yield chunk


async def depth(channel: AbstractChannel, queue: str) -> int:
    """Messages ready in `queue` (not counting those delivered and not yet settled)."""
    declared = await channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count or 0


async def drain(
    channel: AbstractChannel, queue: str, timeout_s: float = 10.0
) -> list[AbstractIncomingMessage]:
    """Every message ready in `queue` now, acked, in order (a consumer: faster than gets)."""
    expected = await depth(channel, queue)
    taken: list[AbstractIncomingMessage] = []
    source = await channel.get_queue(queue)
    tag = await source.consume(functools.partial(_keep, taken))
    try:
        await eventually(lambda: len(taken) >= expected, timeout_s, f"{expected} from {queue}")
    finally:
        await source.cancel(tag)
    return taken


async def _keep(taken: list[AbstractIncomingMessage], message: AbstractIncomingMessage) -> None:
    await message.ack()
    taken.append(message)


def capturable(
    message_id: str,
    routing_key: str = "invalid.entered",
    content_type: str = contract.EVENT_CONTENT_TYPE,
) -> Outbound:
    """A message shaped like a quarantined request of this run."""
    headers: contract.Headers = {contract.TOKEN_NAME_HEADER: TOKEN_NAME}
    return Outbound(message_id, routing_key, b"{}", content_type, 1_700_000_000, headers)


def token_name_of(message: AbstractIncomingMessage) -> str:
    """The token name a gateway stamped on a message, or "" if it is not one of ours."""
    if contract.TOKEN_NAME_HEADER in message.headers:
        return str(message.headers[contract.TOKEN_NAME_HEADER])
    try:
        return str(Event.from_body(message.body).data.get("tokenName"))
    except ValueError:
        return ""


class Capture:
    """Every message arriving on one queue bound to the events exchange, whoever sent it."""

    def __init__(self, queue: AbstractQueue, channel: AbstractChannel) -> None:
        self.queue = queue
        self._channel = channel
        self.received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    @classmethod
    @contextlib.asynccontextmanager
    async def bound(
        cls, channel: AbstractChannel, name: str, binding: str
    ) -> AsyncIterator[Capture]:
        # Exclusive: RabbitMQ 4.3 refuses a transient queue other connections could use.
        queue = await channel.declare_queue(name, exclusive=True)
        await queue.bind(contract.EXCHANGE, binding)
        capture = cls(queue, channel)
        tag = await queue.consume(capture._on_message, no_ack=True)
        try:
            yield capture
        finally:
            await queue.cancel(tag)
            await queue.delete(if_unused=False, if_empty=False)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        await self.received.put(message)

    async def get(self, timeout_s: float = 5.0) -> AbstractIncomingMessage:
        return await asyncio.wait_for(self.received.get(), timeout_s)

    async def nothing_more(self, client: Client, timeout_s: float = 10.0) -> bool:
        """True if nothing arrives that `client`'s gateway published: once its relay has
        nothing unconfirmed (a confirm means routed to this queue), a marker message is
        published, and nothing may come before it."""
        relay = client.app[PIPELINE].relay
        await eventually(lambda: not relay.pending, timeout_s, "the relay to settle")
        marker = f"capture-marker-{uuid.uuid4().hex}"
        exchange = await self._channel.get_exchange(EXCHANGE)
        await exchange.publish(aio_pika.Message(b"", message_id=marker), MARKER_ROUTING_KEY)
        first = await self.get(timeout_s)
        return first.message_id == marker
