"""The relay against the real broker: confirms advance the spool, nothing blocks it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway import contract, spool
from gateway.contract import Outbound
from gateway.publisher import Publisher
from gateway.relay import Relay
from gateway.settings import AmqpSettings
from gateway.spool import Spool
from tests.support import Capture, capturable


def outbound(n: int, content_type: str = contract.EVENT_CONTENT_TYPE) -> Outbound:
    return capturable(f"relay-{n}", content_type=content_type)


@pytest.fixture(params=[1 << 24])
async def running(
    amqp_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Spool, Relay]]:
    """A relay with a memory bound of `request.param` bytes, on a spool in `tmp_path`."""
    store = Spool(tmp_path, 4096, 1 << 24)
    store.recover()
    publisher = Publisher(AmqpSettings(urls=(amqp_url,)))
    relay = Relay(store, publisher, max_in_flight=8, memory_max_bytes=request.param)
    tasks = [asyncio.create_task(publisher.run()), asyncio.create_task(relay.run())]
    yield store, relay
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    store.close()


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
