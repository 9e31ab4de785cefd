"""`http.workers: 2`: two processes on one port, no event lost or duplicated across them,
and a worker killed with SIGKILL is restarted and recovers its own spool."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from devtools.gatewayproc import GatewayProcess
from devtools.loadcheck import (
    Sent,
    Verdict,
    checker_queue,
    classify,
    collect,
    delete_queue,
    markers,
    send_load,
    until_answered,
)
from devtools.rabbitnode import free_port
from gateway.settings import Settings
from gateway.workers import worker_settings
from tests.support import TOKEN, gateway_env, gateway_settings

pytestmark = pytest.mark.slow  # a fault, fuzz or load suite: not in `make test-fast`

LOAD = 2000


def worker_pids(parent: int) -> list[int]:
    """The spawned gateway workers of `parent` (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(p) for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


@pytest.fixture
async def queue_name(amqp_url: str) -> AsyncIterator[str]:
    name = await checker_queue(amqp_url, "workers")
    yield name
    await delete_queue(amqp_url, name)


def wait_for_workers(spool_dir: Path, count: int, timeout_s: float = 20.0) -> None:
    """Until every worker has opened its spool, which it does just before it listens:
    the kernel spreads connections only over the sockets already listening."""
    deadline = time.monotonic() + timeout_s
    while len(list(spool_dir.glob("worker-*/lock"))) < count:
        assert time.monotonic() < deadline, "the workers did not all start"
        time.sleep(0.05)
    time.sleep(0.5)


@pytest.fixture
def two_workers(amqp_url: str, tmp_path: Path) -> Iterator[GatewayProcess]:
    env = gateway_env(amqp_url, tmp_path / "spool", AIFI_HTTP_WORKERS="2")
    process = GatewayProcess(free_port(), env, tmp_path / "gateway.log")
    process.start()
    wait_for_workers(tmp_path / "spool", 2)
    yield process
    process.stop()


def test_each_worker_gets_a_spool_of_its_own(amqp_url: str, tmp_path: Path) -> None:
    settings: Settings = gateway_settings(amqp_url, tmp_path, http={"workers": 2})
    dirs = {worker_settings(settings, i).spool.dir for i in range(2)}
    assert dirs == {tmp_path / "spool" / "worker-0", tmp_path / "spool" / "worker-1"}


async def load_and_check(
    gateway: GatewayProcess, amqp_url: str, queue_name: str, during: Callable[[], None]
) -> Verdict:
    run = f"workers-{uuid.uuid4().hex[:8]}"
    sent_markers = markers(run, LOAD)
    url = f"{gateway.url}/webhooks/aifi/entered"
    sent = Sent()
    load = asyncio.create_task(send_load(url, TOKEN, sent_markers, 64, sent))
    await until_answered(sent, LOAD // 4)
    assert not load.done()
    during()
    await load
    arrived = await collect(amqp_url, queue_name, run, sent.acknowledged, timeout_s=60)
    verdict = classify(sent_markers, sent, arrived)
    assert not verdict.lost
    assert not verdict.unexpected
    assert not verdict.wrong_ids
    assert verdict.acknowledged >= LOAD // 2
    return verdict


def watermarks(spool_dir: Path) -> list[int]:
    return [int((d / "confirmed").read_text()) for d in sorted(spool_dir.glob("worker-*"))]


async def test_two_workers_share_the_load_without_loss_or_duplicates(
    two_workers: GatewayProcess,
    amqp_url: str,
    queue_name: str,
    tmp_path: Path,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    verdict = await load_and_check(two_workers, amqp_url, queue_name, lambda: None)
    checker_report("two-workers", verdict)
    assert not verdict.duplicated
    await asyncio.sleep(0.5)  # the relays checkpoint their watermark every 0.2 s
    marks = await asyncio.to_thread(watermarks, tmp_path / "spool")
    assert len(marks) == 2
    assert all(m > 0 for m in marks), "a worker took no traffic"


async def test_a_killed_worker_is_restarted_and_nothing_is_lost(
    two_workers: GatewayProcess,
    amqp_url: str,
    queue_name: str,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    assert two_workers.process is not None
    pids = worker_pids(two_workers.process.pid)
    assert len(pids) == 2
    verdict = await load_and_check(
        two_workers, amqp_url, queue_name, lambda: os.kill(pids[0], signal.SIGKILL)
    )
    checker_report("two-workers-one-killed", verdict)
    await asyncio.sleep(1.0)  # the supervisor looks every 0.5 s
    replacement = set(worker_pids(two_workers.process.pid)) - set(pids)
    assert len(replacement) == 1, "the killed worker was not restarted"


def test_sigterm_stops_every_worker_with_exit_code_0(two_workers: GatewayProcess) -> None:
    assert two_workers.process is not None
    pids = worker_pids(two_workers.process.pid)
    assert two_workers.terminate() == 0
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
