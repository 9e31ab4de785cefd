"""A failing disk, for real: the gateway's spool on the lazy file system of
tests/support/lazyfs.py while it answers EIO to every fsync.

No event an fsync that failed covered is answered 200 or published, then or after a
restart; the gateway never retries the fsync to call the data safe (after an EIO the
kernel may have dropped the pages and report success to the next fsync, PostgreSQL's
"fsyncgate"): the spool stays poisoned, `/readyz` says so, and the log has an ERROR.
A restart on the spool (here after a power cut too) is the recovery: what was durable
before the failure is delivered, and new events are accepted again.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from devtools.rabbitnode import free_port
from tests.support.gateway import AUTH, TOKEN, gateway_env
from tests.support.lazyfs import LazyFS
from tests.support.loadcheck import (
    EXAMPLE,
    Sent,
    checker_queue,
    collect,
    delete_queue,
    marked_body,
    send_load,
)
from tests.support.processes import GatewayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow  # a fault suite: not in `make test-fast`

BATCH = 60
CONCURRENCY = 8


@pytest.fixture
async def queue_name(amqp_url: str) -> AsyncIterator[str]:
    name = await checker_queue(amqp_url, "fsync-eio")
    yield name
    await delete_queue(amqp_url, name)


def start_gateway(
    amqp_url: str, disk: LazyFS, log: Path, gateways: list[GatewayProcess], mode: str
) -> GatewayProcess:
    env = gateway_env(amqp_url, disk.mount_point / "spool", AIFI_SPOOL_FSYNC=mode)
    process = GatewayProcess(free_port(), env, log)
    gateways.append(process)
    process.start()
    return process


async def batch(gateway: GatewayProcess, run: str, phase: str) -> Sent:
    url = f"{gateway.url}/webhooks/aifi/entered"
    return await send_load(url, TOKEN, [f"{run}-{phase}{n}" for n in range(BATCH)], CONCURRENCY)


async def readiness(gateway: GatewayProcess) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.url}/readyz") as response,
    ):
        return response.status, await response.json()


async def one_refusal(gateway: GatewayProcess, marker: str) -> tuple[int, str, str | None]:
    """Status, media type and Retry-After of one webhook's answer."""
    body = marked_body(orjson.loads(EXAMPLE.read_bytes()), marker)
    async with (
        aiohttp.ClientSession(headers=AUTH) as session,
        session.post(f"{gateway.url}/webhooks/aifi/entered", data=body) as response,
    ):
        await response.read()
        return response.status, response.content_type, response.headers.get("Retry-After")


@pytest.mark.parametrize("mode", ["always", "interval"])
async def test_a_failed_fsync_is_never_answered_200_nor_published(
    mode: str,
    amqp_url: str,
    disk: LazyFS,
    gateways: list[GatewayProcess],
    queue_name: str,
    tmp_path: Path,
) -> None:
    run, log = f"eio-{uuid.uuid4().hex[:8]}", tmp_path / "gateway.log"
    start = functools.partial(start_gateway, amqp_url, disk, log, gateways, mode)
    gateway = await asyncio.to_thread(start)
    before = await batch(gateway, run, "before")
    assert Counter(before.status.values()) == {200: BATCH}

    disk.fail_fsync("/spool/*")  # the segments and the spool directory
    failing = await batch(gateway, run, "failing")
    if mode == "always":
        assert Counter(failing.status.values()) == {503: BATCH}
    else:  # answered before the fsync: the interval's promise, and then refused
        assert set(failing.status.values()) <= {200, 503}
    await eventually(lambda: _not_ready(gateway), 30, "the spool poisoned")
    status, media_type, retry_after = await one_refusal(gateway, f"{run}-failing-one")
    assert (status, media_type) == (503, "application/problem+json")
    assert (retry_after or "").isdigit()
    ready, body = await readiness(gateway)
    assert ready == 503
    assert "fsync failed" in body["spool_problem"]
    assert '"level":"ERROR"' in log.read_text().replace(" ", "")
    assert "spool poisoned" in log.read_text()

    # The disk answers again; the pages may be gone: no fsync may now call them safe.
    assert disk.heal()["fsync_errors"] >= 1
    healed = await batch(gateway, run, "healed")
    assert Counter(healed.status.values()) == {503: BATCH}
    assert (await readiness(gateway))[0] == 503

    # The operator's recovery: restart on the spool (here after a crash and a power cut).
    await asyncio.to_thread(gateway.stop)
    await asyncio.to_thread(disk.cut)
    gateway = await asyncio.to_thread(start)
    await eventually(lambda: _ready(gateway), 30, "readiness after the restart")
    after = await batch(gateway, run, "after")
    assert Counter(after.status.values()) == {200: BATCH}

    expected = before.acknowledged | failing.acknowledged | after.acknowledged
    arrived = {m for m, _ in await collect(amqp_url, queue_name, run, expected, timeout_s=60)}
    assert expected <= arrived, f"lost {len(expected - arrived)}"
    refused = set(failing.status) - failing.acknowledged
    refused |= set(healed.status) | {f"{run}-failing-one"}
    assert not arrived & refused, f"published {len(arrived & refused)} events answered 503"


async def _ready(gateway: GatewayProcess) -> bool:
    return (await readiness(gateway))[0] == 200


async def _not_ready(gateway: GatewayProcess) -> bool:
    return (await readiness(gateway))[0] == 503
