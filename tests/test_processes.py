"""`http.processes: 2`: two gateway processes on one port, no event lost or duplicated across
them; a gateway process killed with SIGKILL is restarted and recovers its own spool; a
supervisor killed with SIGKILL takes its processes along, and its successor recovers every
process's spool."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from core.settings import Settings
from devtools.rabbitnode import free_port
from gateway.processes import ORPHAN_DEADLINE_S, die_with_parent, process_settings
from gateway.spool import read_watermark
from tests.support.gateway import AUTH, TOKEN, gateway_env, gateway_settings
from tests.support.loadcheck import (
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
from tests.support.processes import (
    GATEWAY_ARGV,
    GATEWAY_MODULE_ARGV,
    GatewayProcess,
    group_members,
    is_alive,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow  # a fault, fuzz or load suite: not in `make test-fast`

LOAD = 2000
CONCURRENCY = 64
MAX_IN_FLIGHT = 32
# What a killed process may replay (its relay's unconfirmed publishes, and with `ack:
# confirmed` the requests spooled after a late confirm), for each of the two processes.
DUPLICATES_MAX = 2 * (MAX_IN_FLIGHT + CONCURRENCY)
# How long orphaned gateway processes may take to go, beyond their own deadline: a busy machine.
ORPHAN_SLACK_S = 3.0


def process_pids(parent: int) -> list[int]:
    """The gateway processes of the supervisor `parent`: all its children (it forks them, so
    there is no multiprocessing resource tracker)."""
    return [int(p) for p in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]


def listening_sockets(port: int) -> int:
    """IPv4 sockets listening on `port` (one per gateway process: SO_REUSEPORT)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    fields = [line.split() for line in lines]
    return sum(f[1].endswith(f":{port:04X}") and f[3] == "0A" for f in fields)


def wait_for_processes(gateway: GatewayProcess, count: int, timeout_s: float = 20.0) -> None:
    """Until every gateway process listens: the kernel spreads connections only over the
    sockets already listening."""
    deadline = time.monotonic() + timeout_s
    while listening_sockets(gateway.port) < count:
        assert time.monotonic() < deadline, "the gateway processes did not all start"
        time.sleep(0.05)


def wait_gone(pids: list[int], timeout_s: float) -> float:
    """Seconds until none of `pids` is alive; fails after `timeout_s`."""
    start = time.monotonic()
    while any(map(is_alive, pids)):
        assert time.monotonic() - start < timeout_s, "processes outlived their deadline"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
async def queue_name(amqp_url: str) -> AsyncIterator[str]:
    name = await checker_queue(amqp_url, "processes")
    yield name
    await delete_queue(amqp_url, name)


@pytest.fixture
def ack() -> str:
    """The gateway's `gateway.ack` mode; a test runs in both by parametrizing `ack`."""
    return "spooled"


@pytest.fixture
def two_processes(
    amqp_url: str, tmp_path: Path, ack: str, request: pytest.FixtureRequest
) -> Iterator[GatewayProcess]:
    """`aifi-gateway` with two gateway processes (or another entry point: the parameter)."""
    argv = getattr(request, "param", GATEWAY_ARGV)
    env = gateway_env(
        amqp_url,
        tmp_path / "spool",
        AIFI_HTTP_PROCESSES="2",
        AIFI_GATEWAY_ACK=ack,
        AIFI_SPOOL_MAX_IN_FLIGHT=str(MAX_IN_FLIGHT),
    )
    process = GatewayProcess(free_port(), env, tmp_path / "gateway.log", argv)
    try:
        process.start()
        wait_for_processes(process, 2)
        yield process
    finally:
        process.stop()


def test_each_process_gets_a_spool_of_its_own(amqp_url: str, tmp_path: Path) -> None:
    settings: Settings = gateway_settings(amqp_url, tmp_path, http={"processes": 2})
    dirs = {process_settings(settings, i).spool.dir for i in range(2)}
    assert dirs == {tmp_path / "spool" / "worker-0", tmp_path / "spool" / "worker-1"}


async def post_webhooks(gateway: GatewayProcess, body: bytes, count: int) -> list[int]:
    """`count` webhooks, each on a connection of its own (so both processes get some)."""
    url = f"{gateway.url}/webhooks/aifi/entered"
    statuses = []
    for _ in range(count):
        async with (
            aiohttp.ClientSession(headers=AUTH) as session,
            session.post(url, data=body) as response,
        ):
            statuses.append(response.status)
    return statuses


@pytest.mark.parametrize(
    "two_processes",
    [GATEWAY_ARGV, GATEWAY_MODULE_ARGV],
    ids=["aifi-gateway", "python-m-gateway"],
    indirect=True,
)
async def test_both_entry_points_run_processes_that_accept_webhooks(
    two_processes: GatewayProcess, examples: dict[str, bytes], tmp_path: Path
) -> None:
    assert await post_webhooks(two_processes, examples["entered"], 10) == [200] * 10
    # Ready once connected and the topology declared, which takes each process a moment.
    await eventually(lambda: ready_in_a_row(two_processes.url, 30), 60, "every process ready")
    assert "gateway process died" not in (tmp_path / "gateway.log").read_text()


async def ready_in_a_row(url: str, count: int) -> bool:
    """`/readyz` answered 200 on `count` new connections in a row. The kernel spreads new
    connections over the processes: 30 in a row all reach one of two processes once in
    half a billion tries, so a process that is never ready keeps this false."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            async with session.get(f"{url}/readyz") as response:
                if response.status != 200:
                    return False
    return True


async def load_and_check(
    gateway: GatewayProcess, amqp_url: str, queue_name: str, during: Callable[[], None]
) -> Verdict:
    run = f"processes-{uuid.uuid4().hex[:8]}"
    sent_markers = markers(run, LOAD)
    url = f"{gateway.url}/webhooks/aifi/entered"
    sent = Sent()
    load = asyncio.create_task(send_load(url, TOKEN, sent_markers, CONCURRENCY, sent))
    await until_answered(sent, LOAD // 4)
    assert not load.done()
    during()
    await load
    arrived = await collect(amqp_url, queue_name, run, sent.acknowledged, timeout_s=60)
    verdict = classify(sent_markers, sent, arrived)
    assert not verdict.lost
    assert not verdict.unexpected
    assert not verdict.wrong_ids
    assert verdict.extra_copies <= DUPLICATES_MAX, verdict.summary()
    assert verdict.acknowledged >= LOAD // 2
    return verdict


def watermarks(spool_dir: Path) -> list[int]:
    return [read_watermark(d) for d in sorted(spool_dir.glob("worker-*"))]


async def test_two_processes_share_the_load_without_loss_or_duplicates(
    two_processes: GatewayProcess,
    amqp_url: str,
    queue_name: str,
    tmp_path: Path,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    verdict = await load_and_check(two_processes, amqp_url, queue_name, lambda: None)
    checker_report("two-processes", verdict)
    assert not verdict.duplicated
    # Each relay writes its watermark as its confirms come: both advance.
    marks = watermarks(tmp_path / "spool")
    assert len(marks) == 2
    await eventually(
        lambda: all(m > 0 for m in watermarks(tmp_path / "spool")),
        10,
        "every gateway process to have taken traffic",
    )


@pytest.mark.parametrize("ack", ["spooled", "confirmed"])
async def test_a_killed_process_is_restarted_and_nothing_is_lost(
    two_processes: GatewayProcess,
    amqp_url: str,
    queue_name: str,
    tmp_path: Path,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    assert two_processes.process is not None
    pids = process_pids(two_processes.process.pid)
    assert len(pids) == 2
    verdict = await load_and_check(
        two_processes, amqp_url, queue_name, lambda: os.kill(pids[0], signal.SIGKILL)
    )
    checker_report("two-processes-one-killed", verdict)
    supervisor = two_processes.process.pid

    def restarted() -> bool:
        return len(set(process_pids(supervisor)) - set(pids)) == 1

    await eventually(restarted, 30, "the killed gateway process to be restarted")
    assert "gateway process died; restarting it" in (tmp_path / "gateway.log").read_text()


@pytest.mark.parametrize("ack", ["spooled", "confirmed"])
async def test_a_killed_supervisor_takes_its_processes_along_and_a_restart_loses_nothing(
    two_processes: GatewayProcess,
    amqp_url: str,
    queue_name: str,
    tmp_path: Path,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    assert two_processes.process is not None
    pids = process_pids(two_processes.process.pid)
    run = f"supervisor-{uuid.uuid4().hex[:8]}"
    sent_markers = markers(run, LOAD + LOAD // 4)
    url = f"{two_processes.url}/webhooks/aifi/entered"
    sent = Sent()
    load = asyncio.create_task(send_load(url, TOKEN, sent_markers[:LOAD], CONCURRENCY, sent))
    await until_answered(sent, LOAD // 4)
    assert not load.done()
    two_processes.kill()
    gone_s = await asyncio.to_thread(wait_gone, pids, ORPHAN_DEADLINE_S + ORPHAN_SLACK_S)
    print(f"gateway processes gone {gone_s:.2f} s after their supervisor's SIGKILL")
    await load
    await asyncio.to_thread(two_processes.start)
    await asyncio.to_thread(wait_for_processes, two_processes, 2)
    # The successor takes webhooks too, and recovers what its predecessor's processes spooled.
    await send_load(url, TOKEN, sent_markers[LOAD:], CONCURRENCY, sent)
    arrived = await collect(amqp_url, queue_name, run, sent.acknowledged, timeout_s=60)
    verdict = classify(sent_markers, sent, arrived)
    checker_report("supervisor-killed", verdict)
    assert not verdict.lost, f"lost {len(verdict.lost)}: {sorted(verdict.lost)[:5]}"
    assert not verdict.unexpected
    assert not verdict.wrong_ids
    assert verdict.extra_copies <= DUPLICATES_MAX, verdict.summary()
    assert verdict.acknowledged >= LOAD // 4 + LOAD // 4


def extension_modules(pid: int) -> str:
    """The files `pid` maps: the compiled extension modules it imported among them."""
    return Path(f"/proc/{pid}/maps").read_text()


# Loaded by a gateway process, not needed to supervise: kept out of the supervisor's memory.
APPLICATION_EXTENSIONS = ("pydantic_core", "aiohttp", "uvloop", "yaml")


def test_the_supervisor_holds_neither_the_settings_models_nor_the_application(
    two_processes: GatewayProcess,
) -> None:
    assert two_processes.process is not None
    supervisor = two_processes.process.pid
    pids = process_pids(supervisor)
    assert len(pids) == 2, "two gateway processes, and no resource tracker beside them"
    held = extension_modules(supervisor)
    assert [name for name in APPLICATION_EXTENSIONS if name in held] == []
    assert all("pydantic_core" in extension_modules(pid) for pid in pids)


def test_sigterm_stops_every_process_with_exit_code_0(two_processes: GatewayProcess) -> None:
    assert two_processes.process is not None
    pids = process_pids(two_processes.process.pid)
    assert two_processes.terminate() == 0
    assert not any(map(is_alive, pids))


def test_stop_leaves_no_process_of_the_gateway_alive(two_processes: GatewayProcess) -> None:
    assert two_processes.process is not None
    group = group_members(two_processes.process.pid)
    assert len(group) == 3, "the supervisor and two gateway processes"
    two_processes.stop()
    assert not any(map(is_alive, group))


def stubborn_process(report: multiprocessing.connection.Connection) -> None:
    """A gateway process whose graceful stop never ends: it ignores SIGTERM."""
    die_with_parent(os.getppid())
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    report.send(os.getpid())
    time.sleep(60)


def parent_of_stubborn(report: multiprocessing.connection.Connection) -> None:
    child = multiprocessing.get_context("spawn").Process(target=stubborn_process, args=(report,))
    child.start()
    child.join()


def test_an_orphaned_process_that_will_not_stop_is_killed_at_its_deadline() -> None:
    # Forked, not spawned, from the test process: spawn would start multiprocessing's
    # resource tracker here, a child that outlives the test until the session ends.
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    parent = context.Process(target=parent_of_stubborn, args=(sender,))
    parent.start()
    armed: list[int] = []
    try:
        assert receiver.poll(30), "the gateway process did not arm itself"
        armed.append(receiver.recv())
        parent.kill()
        wait_gone(armed, ORPHAN_DEADLINE_S + ORPHAN_SLACK_S)
    finally:
        parent.kill()
        parent.join()
        for pid in filter(is_alive, armed):
            os.kill(pid, signal.SIGKILL)
        receiver.close()
        sender.close()


def test_a_process_whose_parent_is_already_gone_stops_at_once() -> None:
    context = multiprocessing.get_context("fork")  # no resource tracker left behind
    child = context.Process(target=die_with_parent, args=(os.getpid() + 1,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGTERM
