"""The publisher against the real broker: one write, a confirm per message, each settled apart."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import struct
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import pamqp.commands
import pamqp.constants
import pamqp.frame
import pytest
from aio_pika.abc import AbstractChannel
from pamqp.base import Frame

from core import contract
from core.amqp import connect_first
from core.contract import Outbound
from core.settings import AmqpSettings
from devtools.rabbitnode import LOOPBACK, free_port
from gateway.publisher import Publisher, PublishError, Unencodable
from tests.support.broker import Capture, capturable


def outbound(n: int, routing_key: str = "invalid.entered", content_type: str = "x") -> Outbound:
    return capturable(f"pub-{n}", routing_key, content_type)


@pytest.fixture
async def publisher(amqp_url: str) -> AsyncIterator[Publisher]:
    async with Publisher(AmqpSettings(urls=(amqp_url,))) as publisher:
        await asyncio.wait_for(publisher.wait_ready(), 10)
        yield publisher


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
        f"test.{key}", exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
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


START: Final = pamqp.commands.Connection.Start(
    server_properties={"capabilities": {"publisher_confirms": True}}
)
# What a node answers up to the first declaration; it answers nothing after that.
CONNECTION_REPLIES: Final[dict[type[object], Frame]] = {
    pamqp.commands.Connection.StartOk: pamqp.commands.Connection.Tune(2047, 131072, 0),
    pamqp.commands.Connection.Open: pamqp.commands.Connection.OpenOk(),
    pamqp.commands.Channel.Open: pamqp.commands.Channel.OpenOk(),
    pamqp.commands.Confirm.Select: pamqp.commands.Confirm.SelectOk(),
}
DECLARATIONS: Final = (pamqp.commands.Exchange.Declare, pamqp.commands.Queue.Declare)


class SilentNode:
    """An AMQP server on loopback that opens connections and channels, then holds the
    first declaration for good, as a node cut off from its cluster's majority does."""

    def __init__(self) -> None:
        self.declarations = 0
        self._connections: set[asyncio.Task[Any]] = set()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            try:
                yield f"amqp://guest:guest@{LOOPBACK}:{port}/"
            finally:
                # Each connection ends with the test, whatever the client left open.
                for task in self._connections:
                    task.cancel()
                await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if task := asyncio.current_task():
            self._connections.add(task)
        try:
            await self._converse(reader, writer)
        finally:
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readexactly(8)  # the protocol header
            self._send(writer, 0, START)
            while True:
                channel, frame = await self._read(reader)
                if isinstance(frame, DECLARATIONS):
                    self.declarations += 1
                elif (reply := CONNECTION_REPLIES.get(type(frame))) is not None:
                    self._send(writer, channel, reply)

    @staticmethod
    def _send(writer: asyncio.StreamWriter, channel: int, frame: Frame) -> None:
        writer.write(pamqp.frame.marshal(frame, channel))

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[int, pamqp.frame.FrameTypes]:
        head = await reader.readexactly(pamqp.constants.FRAME_HEADER_SIZE)
        size = struct.unpack(">I", head[3:7])[0]
        _, channel, frame = pamqp.frame.unmarshal(head + await reader.readexactly(size + 1))
        return channel, frame


async def test_a_node_holding_declarations_is_left_for_the_next_url(
    amqp_url: str, capture: Capture
) -> None:
    silent = SilentNode()
    async with silent.serving() as silent_url:
        settings = AmqpSettings(urls=(silent_url, amqp_url), declare_timeout_s=0.5)
        async with Publisher(settings) as publisher:
            # Without a bound on the declaration, the publisher would wait on the first URL forever.
            await asyncio.wait_for(publisher.wait_ready(), 15)
            await asyncio.wait_for(publisher.send(outbound(7)), 10)
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
