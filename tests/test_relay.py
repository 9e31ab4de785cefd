"""The relay against the real broker: confirms advance the spool, nothing blocks it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import aio_pika
import pytest

from core import contract
from core.amqp import declare_topology
from core.contract import Outbound
from core.settings import AmqpSettings
from devtools.rabbitnode import Node, NodeSpec, free_port
from gateway import spool
from gateway.pipeline import Pipeline
from gateway.publisher import Publisher, PublishError, Unencodable
from gateway.relay import Relay
from gateway.spool import Spool
from tests.support.broker import Capture, capturable
from tests.support.gateway import gateway_settings
from tests.test_publisher import written

pytestmark = pytest.mark.broker  # every test here publishes to a node
# Above the gateway's envelope allowance (64 KiB), which any max message size must exceed.
NODE_MAX_MESSAGE_BYTES: Final = 128 * 1024


def outbound(n: int, content_type: str = contract.EVENT_CONTENT_TYPE) -> Outbound:
    return capturable(f"relay-{n}", content_type=content_type)


@contextlib.asynccontextmanager
async def relay_on(
    amqp_url: str, spool_dir: Path, memory_max_bytes: int = 1 << 24, **amqp: Any
) -> AsyncIterator[tuple[Spool, Relay]]:
    """The relay and the spool of an open pipeline whose spool is in `spool_dir`."""
    settings = gateway_settings(
        amqp_url,
        spool_dir,
        http={"max_body_bytes": 1024, "shutdown_timeout_s": 1},
        amqp=amqp,
        spool={
            "dir": str(spool_dir),
            "segment_bytes": 4096,
            "max_in_flight": 8,
            "memory_max_bytes": memory_max_bytes,
        },
    )
    async with Pipeline(settings) as pipeline:
        yield pipeline.spool, pipeline.relay


@pytest.fixture(params=[1 << 24])
async def running(
    amqp_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Spool, Relay]]:
    """A relay with a memory bound of `request.param` bytes, on a spool in `tmp_path`."""
    async with relay_on(amqp_url, tmp_path, request.param) as running:
        yield running


async def test_confirmed_records_advance_the_watermark(
    running: tuple[Spool, Relay], capture: Capture
) -> None:
    store, relay = running
    relay.submit_all([store.append(outbound(n)) for n in range(20)])
    assert await relay.drain(10)
    received = {(await capture.get()).message_id for _ in range(20)}
    assert received == {f"relay-{n}" for n in range(20)}
    assert store.depth == 0
    assert store.watermark == 20
    # On disk at once, not at the next checkpoint: a gateway killed now replays nothing.
    assert spool.read_watermark(store.directory) == 20


def oversized_header(n: int) -> Outbound:
    """Longer header values than a frame holds: the broker would close the connection."""
    plain = outbound(n)
    return dataclasses.replace(plain, headers=plain.headers | {"long": "x" * 200_000})


UNENCODABLE = {
    "content type over 255 bytes": lambda: outbound(0, content_type="text/" + "a" * 300),
    "content header over a frame": lambda: oversized_header(0),
}


@pytest.mark.parametrize("make", UNENCODABLE.values(), ids=UNENCODABLE.keys())
async def test_a_record_amqp_cannot_carry_is_set_aside_and_blocks_nothing(
    running: tuple[Spool, Relay],
    capture: Capture,
    tmp_path: Path,
    make: Callable[[], Outbound],
) -> None:
    store, relay = running
    unencodable = store.append(make())
    relay.submit_all([unencodable, store.append(outbound(1))])
    assert await relay.drain(10)
    assert (await capture.get()).message_id == "relay-1"
    assert store.depth == 0
    assert spool.inspect(tmp_path)["unpublishable"] == 1
    kept = next(iter(spool.read_segment(next((tmp_path / "unpublishable").iterdir()))))
    assert kept.outbound == unencodable.outbound


async def test_a_record_that_cannot_be_set_aside_stays_in_the_spool(
    running: tuple[Spool, Relay], capture: Capture, tmp_path: Path
) -> None:
    store, relay = running
    (tmp_path / "unpublishable").write_text("a file where the directory must go")
    relay.submit_all([store.append(oversized_header(0)), store.append(outbound(1))])
    assert (await capture.get()).message_id == "relay-1"
    assert not await relay.drain(1), "the unencodable record must stay pending"
    assert store.watermark == 0, "and unconfirmed in the spool"
    (tmp_path / "unpublishable").unlink()
    assert await relay.drain(10)
    assert (store.depth, spool.inspect(tmp_path)["unpublishable"]) == (0, 1)


@pytest.mark.parametrize("running", [3000], indirect=True)
async def test_beyond_the_memory_bound_records_wait_on_disk_and_all_go_out(
    running: tuple[Spool, Relay], capture: Capture
) -> None:
    store, relay = running
    records = [store.append(outbound(n)) for n in range(200)]
    relay.submit_all(records)
    assert relay.spilled > 150, "the bound should have left most records on disk"
    assert await relay.drain(20)
    received = [str((await capture.get()).message_id) for _ in range(200)]
    assert sorted(received) == sorted(r.outbound.message_id for r in records)
    assert (relay.spilled, store.depth) == (0, 0)


@pytest.fixture(scope="module")
def small_messages_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A node of this module's own that refuses messages over 128 KiB, as every RabbitMQ
    4.x node refuses those over 16 MiB unless told otherwise."""
    spec = NodeSpec(
        f"relay-msgsize-{uuid.uuid4().hex[:8]}",
        free_port(),
        free_port(),
        tmp_path_factory.mktemp("rmq"),
        extra_conf=f"max_message_size = {NODE_MAX_MESSAGE_BYTES}",
    )
    node = Node(spec)
    node.start()
    yield node
    node.stop()


@pytest.fixture
async def small_messages_capture(small_messages_node: Node) -> AsyncIterator[Capture]:
    connection = await aio_pika.connect(small_messages_node.url)
    async with connection, connection.channel() as channel:
        await declare_topology(channel)
        async with Capture.bound(channel, f"test.{uuid.uuid4().hex}", "#") as capture:
            yield capture


def oversized_body(n: int) -> Outbound:
    return dataclasses.replace(outbound(n), body=b"x" * (NODE_MAX_MESSAGE_BYTES + 1))


async def test_the_broker_refuses_a_body_over_its_max_message_size_and_what_follows_it(
    small_messages_node: Node,
) -> None:
    """Why the gateway must know the broker's limit: an oversized message closes the
    channel, and with it every message written after it."""
    settings = AmqpSettings(urls=(small_messages_node.url,), max_message_bytes=1 << 24)
    async with Publisher(settings, {}) as publisher:
        await asyncio.wait_for(publisher.wait_ready(), 10)
        settled = await written(publisher, [oversized_body(0), outbound(1)])
        for error in await settled.wait(2):
            assert isinstance(error, PublishError)
            assert not isinstance(error, Unencodable), "the broker refused it, not we"


async def test_a_record_over_max_message_bytes_is_set_aside_and_its_batch_still_goes(
    small_messages_node: Node, small_messages_capture: Capture, tmp_path: Path
) -> None:
    async with relay_on(
        small_messages_node.url, tmp_path, max_message_bytes=NODE_MAX_MESSAGE_BYTES
    ) as (store, relay):
        records = [store.append(outbound(0)), store.append(oversized_body(1))]
        relay.submit_all([*records, store.append(outbound(2))])
        assert await relay.drain(10)
        received = {(await small_messages_capture.get()).message_id for _ in range(2)}
        assert received == {"relay-0", "relay-2"}
        # Each record written once: none failed and came back for another attempt.
        assert (store.depth, relay.publish_attempts, relay.confirmed) == (0, 3, 3)
    assert spool.inspect(tmp_path)["unpublishable"] == 1
    kept = next(iter(spool.read_segment(next((tmp_path / "unpublishable").iterdir()))))
    assert kept.outbound == records[1].outbound
