"""Zero loss and exactly-once on a three-node RabbitMQ cluster whose nodes are separate
hosts (network namespaces on a bridge, `tests.support.cluster`), under real faults: the
gateway's node crashed (SIGKILL) or cut off for 30 s, the leader of the workers' quorum
queues cut off while they consume, and a flaky or one-way link between the gateway and its
node. The gateway and the workers run on the host and reach the nodes over the bridge;
the total-queue checker reads a quorum queue replicated on all three nodes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aio_pika
import pytest

from consumers import topology
from core import contract
from core.amqp import declare_topology
from core.settings import LedgerSettings
from devtools.rabbitnode import Node, free_port
from gateway.relay import FAILURE_PAUSE_S
from tests.support import broker, ledger_reference as reference, ledger_schema as schema
from tests.support.cluster import Cluster, netns_cluster, vhost_url
from tests.support.consumer import Scratch
from tests.support.gateway import TOKEN, gateway_env
from tests.support.loadcheck import (
    Sent,
    Verdict,
    checker_queue,
    classify,
    collect,
    delete_queue,
    send_load,
)
from tests.support.processes import GatewayProcess, child_environ, group_members
from tests.support.waiting import eventually
from tests.test_ledger_faults import BASE, Workers, processed_at_least, stream

# In `make test`, but for the flaky-link test (`cluster`: `make test-cluster` runs the
# whole module), which would take the suite too close to its time budget.
pytestmark = pytest.mark.slow

CONCURRENCY = 16
PARTITION_S = 30.0
FLAKY_S = 15.0
FLAKY_LOSS = 0.2
# The gateway's timeouts in these tests, and what they bound: a silent node is left once a
# confirm is overdue by publish_timeout_s (checked every quarter of it); the next URL may
# be the cut-off node itself (a connect attempt of publish_timeout_s), then one that
# answers (declarations within declare_timeout_s), after a backoff of reconnect_max_s at
# most; the relay pauses FAILURE_PAUSE_S after the failed publishes.
PUBLISH_TIMEOUT_S = 2.0
DECLARE_TIMEOUT_S = 3.0
RECONNECT_MAX_S = 0.5
MOVE_BOUND_S = PUBLISH_TIMEOUT_S * 1.25 + RECONNECT_MAX_S + PUBLISH_TIMEOUT_S + DECLARE_TIMEOUT_S
STALL_BOUND_S = MOVE_BOUND_S + FAILURE_PAUSE_S
_CONNECTION = re.compile(r"(\d+\.\d+\.\d+\.\d+):5672\s+users:\(\(.*?pid=(\d+)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("the cluster tests make network namespaces: run them as root", pytrace=False)
    with netns_cluster(tmp_path_factory.mktemp("cluster")) as made:
        yield made


@pytest.fixture
def whole(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with every node up and every link clean, before and after the test."""
    cluster.heal_all()
    yield cluster
    cluster.heal_all()


def queue_leaders(node: Node) -> dict[str, str]:
    """Queue name -> the node leading it, as `node` sees the cluster.

    `eval` rather than `list_queues`: the latter has every node send its rows to the CLI
    directly, and the CLI's host name means nothing inside the namespaces."""
    code = "[{N, L} || [{name, {resource, _, queue, N}}, {leader, L}] <- "
    code += 'rabbit_amqqueue:info_all(<<"aifi-cluster">>, [name, leader])].'
    return dict(re.findall(r"\{<<\"([^\"]+)\">>,'([^']+)'\}", node.ctl("eval", code)))


def led_by(node: Node, queue: str) -> str | None:
    try:
        return queue_leaders(node).get(queue)
    except subprocess.CalledProcessError:  # the node is busy electing
        return None


def gateway_nodes(cluster: Cluster, gateway: GatewayProcess) -> set[Node]:
    """The nodes the gateway holds an established AMQP connection to, seen from the host."""
    pids = {pid for group in gateway.groups for pid in group_members(group)}
    subnet = str(cluster.fabric.subnet)
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", "dst", subnet],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {cluster.node_at(a) for a, pid in _CONNECTION.findall(out) if int(pid) in pids}


async def connected_elsewhere(
    cluster: Cluster, gateway: GatewayProcess, avoid: Node, timeout_s: float
) -> Node:
    """The node other than `avoid` the gateway connects to within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(gateway_nodes, cluster, gateway)
        if found - {avoid}:
            return (found - {avoid}).pop()
        await asyncio.sleep(0.1)
    raise AssertionError(f"the gateway did not leave {avoid.nodename} in {timeout_s} s")


@contextlib.contextmanager
def started_gateway(cluster: Cluster, tmp_path: Path, **settings: str) -> Iterator[GatewayProcess]:
    env = gateway_env(
        ",".join(vhost_url(node) for node in cluster.nodes),
        tmp_path / "spool",
        AIFI_AMQP_PUBLISH_TIMEOUT_S=str(PUBLISH_TIMEOUT_S),
        AIFI_AMQP_DECLARE_TIMEOUT_S=str(DECLARE_TIMEOUT_S),
        AIFI_AMQP_RECONNECT_MAX_S=str(RECONNECT_MAX_S),
        # INFO keeps the gateway's connect/lost/connected lines in its log: what to read
        # when a test fails.
        AIFI_LOG_LEVEL="INFO",
        **settings,
    )
    process = GatewayProcess(free_port(), env, tmp_path / "gateway.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


class Load:
    """A steady load (`per_tick` requests every `tick_s`) on the gateway until `stop`."""

    def __init__(self, gateway: GatewayProcess, per_tick: int = 20, tick_s: float = 0.2):
        self.url = f"{gateway.url}/webhooks/aifi/entered"
        self.run = f"part-{uuid.uuid4().hex[:8]}"
        self.per_tick, self.tick_s = per_tick, tick_s
        self.sent = Sent()
        self.markers: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Load:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            start = len(self.markers)
            batch = [f"{self.run}-{i}" for i in range(start, start + self.per_tick)]
            self.markers += batch
            await asyncio.gather(
                send_load(self.url, TOKEN, batch, CONCURRENCY, self.sent),
                asyncio.sleep(self.tick_s),
            )

    def answered_200_between(self, start: float, end: float) -> int:
        return sum(
            1
            for m, at in self.sent.answered_at.items()
            if start <= at <= end and self.sent.status[m] == 200
        )


class Arrivals:
    """When each event of a run reached a queue bound to `#`, read live from `node`."""

    def __init__(self, node: Node, run: str) -> None:
        self.node, self.run = node, run
        self.times: list[float] = []

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[Arrivals]:
        url = vhost_url(self.node)
        name = await checker_queue(url, "arrivals", {"x-queue-type": "quorum"})
        connection = await aio_pika.connect(url)
        async with connection, connection.channel() as channel:
            queue = await channel.get_queue(name)
            tag = await queue.consume(self._arrived, no_ack=True)
            try:
                yield self
            finally:
                await queue.cancel(tag)
                await queue.delete(if_unused=False, if_empty=False)

    async def _arrived(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.times.append(time.monotonic())

    def longest_gap_s(self, start: float, end: float) -> float:
        """The longest time without an arrival between start and end."""
        moments = [start, *(t for t in self.times if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(moments))


async def verdict_of(load: Load, survivor: Node, queue_name: str) -> Verdict:
    arrived = await collect(
        vhost_url(survivor), queue_name, load.run, load.sent.acknowledged, timeout_s=120
    )
    return classify(load.markers, load.sent, arrived)


def assert_nothing_lost(verdict: Verdict) -> None:
    assert not verdict.lost, f"lost {len(verdict.lost)}: {sorted(verdict.lost)[:5]}"
    assert not verdict.unexpected
    assert not verdict.wrong_ids


@pytest.fixture
async def queue_name(whole: Cluster) -> AsyncIterator[str]:
    """A durable quorum queue on all three nodes, bound to `#`: the checker's view."""
    url = vhost_url(whole.nodes[0])
    name = await checker_queue(url, "cluster", {"x-queue-type": "quorum"})
    assert queue_leaders(whole.nodes[0]).get(name)
    yield name
    with contextlib.suppress(Exception):  # a test may leave a node down
        await delete_queue(url, name)


async def test_gateway_node_sigkill_mid_load_loses_nothing(
    whole: Cluster,
    queue_name: str,
    tmp_path: Path,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    started = time.monotonic()
    with started_gateway(whole, tmp_path) as gateway:
        [victim] = await asyncio.to_thread(gateway_nodes, whole, gateway)
        async with Load(gateway) as load:
            await eventually(lambda: len(load.sent.acknowledged) > 300, 60, "load")
            await asyncio.to_thread(victim.kill)
            moved_to = await connected_elsewhere(whole, gateway, victim, 60)
            await eventually(lambda: load.answered_200_between(time.monotonic() - 1, 1e12) > 0)
        # The checker's queue may have lost its leader with the victim: read it once a
        # survivor leads it.
        survivors = {node.nodename for node in whole.others(victim)}
        await eventually(lambda: led_by(moved_to, queue_name) in survivors, 60, "a new leader")
        verdict = await verdict_of(load, moved_to, queue_name)
    checker_report(f"kill {victim.nodename} ({time.monotonic() - started:.0f} s)", verdict)
    assert_nothing_lost(verdict)
    assert verdict.acknowledged >= 300


async def test_gateway_node_cut_off_for_30_s_loses_nothing(
    whole: Cluster,
    queue_name: str,
    tmp_path: Path,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    started = time.monotonic()
    with started_gateway(whole, tmp_path) as gateway:
        [victim] = await asyncio.to_thread(gateway_nodes, whole, gateway)
        async with Load(gateway) as load:
            await eventually(lambda: len(load.sent.acknowledged) > 300, 60, "load")
            cut = time.monotonic()
            whole.fabric.isolate(whole.host(victim))
            try:
                moved_to = await connected_elsewhere(whole, gateway, victim, PARTITION_S)
                moved_s = time.monotonic() - cut
                await asyncio.sleep(max(0.0, cut + PARTITION_S - time.monotonic()))
            finally:
                whole.fabric.heal(whole.host(victim))
            healed = time.monotonic()
            await eventually(lambda: load.answered_200_between(healed, 1e12) > 100, 60, "load")
        verdict = await verdict_of(load, moved_to, queue_name)
    during = load.answered_200_between(cut, healed)
    name = f"cut off {victim.nodename} {PARTITION_S:.0f} s, moved in {moved_s:.1f} s"
    checker_report(f"{name}, 200s while cut {during} ({time.monotonic() - started:.0f} s)", verdict)
    assert_nothing_lost(verdict)
    assert moved_s <= MOVE_BOUND_S, f"moved after {moved_s:.1f} s > {MOVE_BOUND_S} s"
    # From the spool: the broker the gateway used was gone, the answers went on.
    assert during >= PARTITION_S * 20, f"only {during} requests answered 200 while cut off"


@pytest.mark.cluster
async def test_flaky_then_one_way_link_loses_nothing_and_stalls_briefly(
    whole: Cluster,
    queue_name: str,
    tmp_path: Path,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    started = time.monotonic()
    with started_gateway(whole, tmp_path) as gateway:
        [victim] = await asyncio.to_thread(gateway_nodes, whole, gateway)
        host = whole.host(victim)
        witness = whole.others(victim)[0]
        async with Load(gateway) as load, Arrivals(witness, load.run).watching() as arrivals:
            await eventually(lambda: len(load.sent.acknowledged) > 300, 60, "load")
            begin = time.monotonic()
            whole.fabric.flaky(host, FLAKY_LOSS)
            try:
                await asyncio.sleep(FLAKY_S)
            finally:
                whole.fabric.steady(host, FLAKY_LOSS)
            # One way: the node no longer hears the gateway, the gateway still hears it.
            nodes_now = await asyncio.to_thread(gateway_nodes, whole, gateway)
            dropping = victim if victim in nodes_now else nodes_now.pop()
            whole.fabric.drop_from(whole.host(dropping), whole.fabric.gateway_address)
            try:
                await connected_elsewhere(whole, gateway, dropping, 30)
                await asyncio.sleep(5)
            finally:
                whole.fabric.undrop_from(whole.host(dropping), whole.fabric.gateway_address)
            end = time.monotonic()
            await eventually(lambda: load.answered_200_between(end, 1e12) > 100, 60, "load")
        survivor = next(n for n in whole.nodes if n is not dropping)
        verdict = await verdict_of(load, survivor, queue_name)
    stall_s = arrivals.longest_gap_s(begin, end)
    checker_report(
        f"flaky+one-way, longest stall {stall_s:.1f} s ({time.monotonic() - started:.0f} s)",
        verdict,
    )
    assert_nothing_lost(verdict)
    assert stall_s <= STALL_BOUND_S, f"no event arrived for {stall_s:.1f} s > {STALL_BOUND_S}"


async def test_quorum_leader_cut_off_while_workers_consume_applies_each_once(
    whole: Cluster, tmp_path: Path, store: int
) -> None:
    started = time.monotonic()
    outbounds, events = stream(store)
    declarer = whole.nodes[0]
    made = Scratch(vhost_url(declarer), BASE)
    name, settings = made.consumer(f"entered.{store}", f"exited.{store}", f"tracking.{store}")
    connection = await aio_pika.connect(vhost_url(declarer))
    async with connection, connection.channel() as channel:
        await declare_topology(channel)
        await topology.declare(channel, name, settings)
        await broker.publish(channel, outbounds)
    leader = whole.node_at(queue_leaders(declarer)[contract.queue_name(name)].split("@")[1])
    others = whole.others(leader)
    db = tmp_path / "ledger.sqlite3"
    # One worker connected to the leader, one to another node.
    crews = [
        Workers(tmp_path / f"w{i}", name, settings, worker_env(order, db))
        for i, order in enumerate([[leader, *others], [*others, leader]])
    ]
    try:
        for crew in crews:
            crew.folder.mkdir()
            index = crew.start()
            await eventually(functools.partial(crew.consuming, index), 60, "a worker")
        ledger_settings = LedgerSettings(db=db)
        await eventually(lambda: processed_at_least(ledger_settings, 300), 120, "progress")
        whole.fabric.isolate(whole.host(leader))
        total = len(reference.distinct(events))
        try:
            assert await schema.processed(ledger_settings) < total, "the cut came after the stream"
            await asyncio.sleep(PARTITION_S)
        finally:
            whole.fabric.heal(whole.host(leader))
        await eventually(lambda: processed_at_least(ledger_settings, total), 300, f"{total} events")
        for crew in crews:
            assert set(await crew.stop_all()) == {0}
        assert await reference.differences(ledger_settings, events) == []
        new_leader = queue_leaders(others[0]).get(contract.queue_name(name))
    finally:
        for crew in crews:
            crew.kill_all()
        with contextlib.suppress(Exception):
            await made.delete()
    print(
        f"leader {leader.nodename} cut off {PARTITION_S:.0f} s; new leader {new_leader}; "
        f"{len(outbounds)} deliveries, {total} events applied once "
        f"({time.monotonic() - started:.0f} s)"
    )


def worker_env(order: list[Node], db: Path) -> dict[str, str]:
    urls = ",".join(vhost_url(node) for node in order)
    return child_environ() | {
        "AIFI_AMQP_URL": urls,
        "AIFI_LEDGER_DB": str(db),
        "AIFI_AMQP_PUBLISH_TIMEOUT_S": str(PUBLISH_TIMEOUT_S),
        "AIFI_AMQP_RECONNECT_MAX_S": str(RECONNECT_MAX_S),
    }
