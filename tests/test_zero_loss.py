"""Zero loss under real faults: a few thousand events in flight, checked end to end.

Each test runs `aifi-gateway` as a process against a private RabbitMQ node of
its own, causes one fault for real in the middle of a loopback load, and
classifies every request with the total-queue checker: nothing answered 200 may
be lost, nothing may arrive that was not sent, every copy of an event carries the
id its request was answered with, and duplicates stay within what was in flight.
Every fault runs in both `gateway.ack` modes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.rabbitnode import Node, NodeSpec, free_port
from tests.support.gateway import TOKEN, gateway_env
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
from tests.support.processes import GatewayProcess

pytestmark = pytest.mark.slow  # a fault, fuzz or load suite: not in `make test-fast`

LOAD = 3000
CONCURRENCY = 64
# Publishes the relay keeps unconfirmed at once: all a killed gateway can replay that the
# broker may already hold, its confirms recorded the moment they are read.
MAX_IN_FLIGHT = 32
# A fault may cut off the relay's unconfirmed publishes and, with `gateway.ack: confirmed`, every
# request's own publish (spooled again when no confirm came in time).
DUPLICATES_MAX = MAX_IN_FLIGHT + CONCURRENCY
# With `ack: confirmed`, each confirm later than `gateway.confirm_timeout_ms` (a busy machine) also
# leaves a copy, the request having been spooled meanwhile: no bound follows from the
# settings, only this sanity one.
CONFIRMED_DUPLICATES_MAX = LOAD // 10
Fault = Callable[[], Awaitable[None]]


def test_the_checker_sees_a_copy_under_another_id_and_counts_copies() -> None:
    sent = Sent()
    sent.record("r-0", 200, "id-0")
    sent.record("r-1", 503)
    # r-0 replayed under its id, r-1 (refused, yet published) twice under two ids.
    arrived = [("r-0", "id-0"), ("r-0", "id-0"), ("r-1", "id-a"), ("r-1", "id-b")]
    verdict = classify(["r-0", "r-1"], sent, arrived)
    assert verdict.wrong_ids == {"r-1"}
    assert verdict.extra_copies == 2
    assert classify(["r-0"], sent, [("r-0", "id-0"), ("r-0", "id-x")]).wrong_ids == {"r-0"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A broker this module may kill: never the one the rest of the suite uses."""
    # A unique name: epmd refuses a node whose name another run on this machine holds.
    name = f"aifi-zero-loss-{uuid.uuid4().hex[:8]}"
    spec = NodeSpec(name, free_port(), free_port(), tmp_path_factory.mktemp("rmq"))
    broker = Node(spec)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
async def queue_name(node: Node) -> AsyncIterator[str]:
    name = await checker_queue(node.url, "zero-loss")
    yield name
    if not node.is_running():
        node.start()
    await delete_queue(node.url, name)


@pytest.fixture(params=["spooled", "confirmed"])
def gateway(request: pytest.FixtureRequest, node: Node, tmp_path: Path) -> Iterator[GatewayProcess]:
    env = gateway_env(
        node.url,
        tmp_path / "spool",
        AIFI_GATEWAY_ACK=request.param,
        AIFI_AMQP_PUBLISH_TIMEOUT_S="2",
        AIFI_AMQP_RECONNECT_MAX_S="0.5",
        # A small bound, so that the backlog of an outage spills to disk and is read back.
        AIFI_SPOOL_MEMORY_MAX_BYTES="262144",
        AIFI_SPOOL_MAX_IN_FLIGHT=str(MAX_IN_FLIGHT),
    )
    process = GatewayProcess(free_port(), env, tmp_path / "gateway.log")
    process.start()
    yield process
    process.stop()


async def run_with_fault(
    gateway: GatewayProcess,
    node: Node,
    queue_name: str,
    fault: Fault,
    report: Callable[[str, Verdict], None],
    name: str,
) -> Verdict:
    run = f"{name}-{uuid.uuid4().hex[:8]}"
    sent_markers = markers(run, LOAD)
    url = f"{gateway.url}/webhooks/aifi/entered"
    sent = Sent()
    load = asyncio.create_task(send_load(url, TOKEN, sent_markers, CONCURRENCY, sent))
    await until_answered(sent, LOAD // 4)
    assert not load.done(), "the load ended before the fault: it would prove nothing"
    await fault()
    await load
    if not node.is_running():
        await asyncio.to_thread(node.start)
    arrived = await collect(node.url, queue_name, run, sent.acknowledged, timeout_s=90)
    verdict = classify(sent_markers, sent, arrived)
    report(name, verdict)
    return verdict


def duplicates_max(gateway: GatewayProcess) -> int:
    spooled = gateway.env["AIFI_GATEWAY_ACK"] == "spooled"
    return DUPLICATES_MAX if spooled else CONFIRMED_DUPLICATES_MAX


def assert_nothing_lost(verdict: Verdict, bound: int) -> None:
    assert not verdict.lost, f"lost {len(verdict.lost)}: {sorted(verdict.lost)[:5]}"
    assert not verdict.unexpected
    assert not verdict.wrong_ids, f"copies with another id: {sorted(verdict.wrong_ids)[:5]}"
    assert verdict.extra_copies <= bound, verdict.summary()
    assert verdict.acknowledged >= LOAD // 4, "the load hardly ran; the fault proved nothing"


async def test_broker_sigkill_mid_load(
    gateway: GatewayProcess,
    node: Node,
    queue_name: str,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    async def crash_and_restart() -> None:
        await asyncio.to_thread(node.kill)
        await asyncio.sleep(1)
        await asyncio.to_thread(node.start)

    verdict = await run_with_fault(
        gateway, node, queue_name, crash_and_restart, checker_report, "broker-kill"
    )
    assert_nothing_lost(verdict, duplicates_max(gateway))


async def test_gateway_sigkill_mid_load(
    gateway: GatewayProcess,
    node: Node,
    queue_name: str,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    async def crash_and_restart() -> None:
        gateway.kill()
        await asyncio.to_thread(gateway.start)

    verdict = await run_with_fault(
        gateway, node, queue_name, crash_and_restart, checker_report, "gateway-kill"
    )
    # A restart replays what was not confirmed: at most what was in flight may be a copy
    # (with `gateway.ack: confirmed`, also what was spooled after its confirm was late).
    spooled = gateway.env["AIFI_GATEWAY_ACK"] == "spooled"
    assert_nothing_lost(verdict, MAX_IN_FLIGHT if spooled else CONFIRMED_DUPLICATES_MAX)
    assert verdict.acknowledged < LOAD, "the crash should have refused some requests"


async def test_connection_cut_mid_load(
    gateway: GatewayProcess,
    node: Node,
    queue_name: str,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    async def cut() -> None:
        await asyncio.to_thread(node.close_all_connections, "zero-loss test")

    verdict = await run_with_fault(gateway, node, queue_name, cut, checker_report, "conn-cut")
    assert_nothing_lost(verdict, duplicates_max(gateway))


async def test_sigterm_under_load_exits_0_and_loses_nothing(
    gateway: GatewayProcess,
    node: Node,
    queue_name: str,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    exit_codes: list[int] = []

    async def terminate_then_restart() -> None:
        exit_codes.append(await asyncio.to_thread(gateway.terminate))
        await asyncio.to_thread(gateway.start)

    verdict = await run_with_fault(
        gateway, node, queue_name, terminate_then_restart, checker_report, "gateway-sigterm"
    )
    assert exit_codes == [0]
    assert_nothing_lost(verdict, duplicates_max(gateway))


async def readiness(gateway: GatewayProcess) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.url}/readyz") as response,
    ):
        return response.status, await response.json()


async def until_not_ready(gateway: GatewayProcess, timeout_s: float = 15.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            status, body = await readiness(gateway)
            if status == 503:
                return body
            await asyncio.sleep(0.2)


async def test_a_blocked_broker_is_not_ready_yet_loses_nothing(
    gateway: GatewayProcess,
    node: Node,
    queue_name: str,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    run = f"blocked-{uuid.uuid4().hex[:8]}"
    sent_markers = markers(run, 500)
    url = f"{gateway.url}/webhooks/aifi/entered"
    # A memory alarm: the broker blocks every publishing connection, it does not close them.
    await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", "0.0000001")
    try:
        sent = await send_load(url, TOKEN, sent_markers, CONCURRENCY)
        status = await until_not_ready(gateway)
    finally:
        await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", "0.4")
    assert len(sent.acknowledged) == len(sent_markers), "spooling goes on while blocked"
    assert status["broker_connected"] is True
    assert status["relay_stalled"] is True
    assert status["spool"]["depth"] > 0
    arrived = await collect(node.url, queue_name, run, sent.acknowledged, timeout_s=60)
    verdict = classify(sent_markers, sent, arrived)
    checker_report("blocked", verdict)
    assert not verdict.lost
    assert not verdict.unexpected
    assert not verdict.wrong_ids
    assert verdict.extra_copies <= duplicates_max(gateway), verdict.summary()
    assert (await readiness(gateway))[0] == 200
