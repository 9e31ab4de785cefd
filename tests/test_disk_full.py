"""A full disk, for real: the spool on a 2 MiB tmpfs while no broker answers.

The gateway may only answer 200 (the event is on disk) or 503 with Retry-After, and
must stay up. Restarted on the same spool with a broker, it delivers every event it
answered 200 for, and none it refused. Needs root, to mount the tmpfs.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest

from devtools.rabbitnode import free_port
from tests.support.gateway import TOKEN, gateway_env
from tests.support.loadcheck import (
    EXAMPLE,
    Sent,
    checker_queue,
    classify,
    collect,
    delete_queue,
    marked_body,
    markers,
    post_one,
)
from tests.support.processes import GatewayProcess

DISK_SIZE = "2m"
# An `entered` record takes about 3 KiB on disk: 2 MiB hold some 700, so the disk is
# full long before the last batch.
BATCH = 100
MAX_BATCHES = 30
CONCURRENCY = 16
MOUNT_TIMEOUT_S = 30


@dataclass
class Answers:
    """What the gateway answered, with the Retry-After of each 503."""

    sent: Sent = field(default_factory=Sent)
    retry_after: dict[str, str | None] = field(default_factory=dict)

    def statuses(self) -> Counter[int | str]:
        return Counter(self.sent.status.values())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    assert os.geteuid() == 0, "this test mounts a tmpfs: run it as root"
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    options = ["-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mount_point)]
    subprocess.run(["mount", *options], check=True, timeout=MOUNT_TIMEOUT_S)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True, timeout=MOUNT_TIMEOUT_S)


@pytest.fixture
def gateways(small_disk: Path, tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    """The gateway processes the test starts, stopped before the disk is unmounted."""
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture
async def queue_name(amqp_url: str) -> AsyncIterator[str]:
    name = await checker_queue(amqp_url, "disk-full")
    yield name
    await delete_queue(amqp_url, name)


def start_gateway(amqp_url: str, spool: Path, log: Path) -> GatewayProcess:
    env = gateway_env(
        amqp_url,
        spool,
        AIFI_AMQP_RECONNECT_MAX_S="0.5",
        AIFI_HTTP_SHUTDOWN_TIMEOUT_S="2",
        # Several segments, so that the disk fills both within a segment and when one opens.
        AIFI_SPOOL_SEGMENT_BYTES=str(256 * 1024),
    )
    process = GatewayProcess(free_port(), env, log)
    process.start()
    return process


async def post(
    session: aiohttp.ClientSession, url: str, marker: str, body: bytes, answers: Answers
) -> None:
    headers = await post_one(session, url, marker, body, answers.sent)
    if headers is not None:
        answers.retry_after[marker] = headers.get("Retry-After")


async def post_until_refused(url: str, sent_markers: list[str]) -> Answers:
    """Batches of `entered` webhooks until one holds a 503, then one batch more."""
    assert url.startswith("http://127.0.0.1"), "loopback only"
    template, answers = orjson.loads(EXAMPLE.read_bytes()), Answers()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    slots, refused_batches = asyncio.Semaphore(CONCURRENCY), 0
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:

        async def one(marker: str) -> None:
            async with slots:
                await post(session, url, marker, marked_body(template, marker), answers)

        for start in range(0, len(sent_markers), BATCH):
            await asyncio.gather(*(one(m) for m in sent_markers[start : start + BATCH]))
            refused_batches += 503 in answers.statuses()
            if refused_batches == 2:
                break
    return answers


def healthy(process: GatewayProcess) -> bool:
    with urllib.request.urlopen(f"{process.url}/healthz", timeout=5) as response:
        status: int = response.status
    return status == 200


async def fill(gateway: GatewayProcess, sent_markers: list[str]) -> Answers:
    """Webhooks until the disk is full; only 200 or 503 with Retry-After, and still alive."""
    answers = await post_until_refused(f"{gateway.url}/webhooks/aifi/entered", sent_markers)
    statuses = answers.statuses()
    assert set(statuses) == {200, 503}, statuses
    refused = {m for m, s in answers.sent.status.items() if s == 503}
    assert all((answers.retry_after[m] or "").isdigit() for m in refused)
    assert gateway.process is not None
    assert gateway.process.poll() is None
    assert await asyncio.to_thread(healthy, gateway)
    return answers


async def test_a_full_disk_refuses_with_503_and_loses_nothing_acknowledged(
    amqp_url: str, small_disk: Path, gateways: list[GatewayProcess], queue_name: str
) -> None:
    run = f"disk-full-{uuid.uuid4().hex[:8]}"
    sent_markers = markers(run, BATCH * MAX_BATCHES)
    spool, log = small_disk / "spool", small_disk.parent / "gateway.log"
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    gateways.append(await asyncio.to_thread(start_gateway, nowhere, spool, log))
    answers = await fill(gateways[0], sent_markers)
    assert await asyncio.to_thread(gateways[0].terminate) == 0

    gateways.append(await asyncio.to_thread(start_gateway, amqp_url, spool, log))
    acknowledged = answers.sent.acknowledged
    arrived = await collect(amqp_url, queue_name, run, acknowledged, timeout_s=60)
    verdict = classify(sent_markers, answers.sent, arrived)
    assert not verdict.lost, f"lost {len(verdict.lost)} of {len(acknowledged)}"
    assert not verdict.wrong_ids
    assert {m for m, _ in arrived} <= acknowledged, "a refused event was delivered"

    # Delivered, the backlog leaves the disk: the gateway accepts again.
    again = await post_until_refused(f"{gateways[1].url}/webhooks/aifi/entered", [f"{run}-x"])
    assert again.statuses() == {200: 1}
