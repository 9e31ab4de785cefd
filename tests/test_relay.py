"""The relay against the real broker: confirms advance the spool, nothing blocks it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import contract, spool
from gateway.contract import Outbound
from gateway.publisher import Publisher
from gateway.relay import Relay
from gateway.settings import AmqpSettings
from gateway.spool import Spool
from tests.support import TOKEN_NAME, Capture


def outbound(n: int, content_type: str = contract.EVENT_CONTENT_TYPE) -> Outbound:
    # Shaped like a quarantined request of this run, so that `capture` keeps it.
    headers: contract.Headers = {contract.TOKEN_NAME_HEADER: TOKEN_NAME, "n": n}
    return Outbound(f"relay-{n}", "invalid.entered", b"{}", content_type, 1_700_000_000, headers)


@pytest.fixture
async def running(amqp_url: str, tmp_path: Path) -> AsyncIterator[tuple[Spool, Relay]]:
    store = Spool(tmp_path, 1 << 20, 1 << 24)
    store.recover()
    publisher = Publisher(AmqpSettings(urls=(amqp_url,)))
    relay = Relay(store, publisher, max_in_flight=8)
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


async def test_a_record_amqp_cannot_carry_is_set_aside_and_blocks_nothing(
    running: tuple[Spool, Relay], capture: Capture, tmp_path: Path
) -> None:
    store, relay = running
    unencodable = store.append(outbound(0, content_type="text/" + "a" * 300))
    relay.submit_all([unencodable, store.append(outbound(1))])
    assert await relay.drain(10)
    assert (await capture.get()).message_id == "relay-1"
    assert store.depth == 0
    assert spool.inspect(tmp_path)["unpublishable"] == 1
    kept = next(iter(spool.read_segment(next((tmp_path / "unpublishable").iterdir()))))
    assert kept.outbound == unencodable.outbound
