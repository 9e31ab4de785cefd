"""Zero loss on a three-node RabbitMQ cluster when the node the gateway uses dies.

Three private nodes on loopback form one cluster. The gateway is given all three URLs and
connects to the first that answers. Mid-load, the node it is connected to is SIGKILLed
and never comes back: the gateway must move to a surviving node on its own, and the
total-queue checker, reading a quorum queue replicated on all three nodes from a
survivor, must find every event answered 200.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aio_pika
import pytest

from core import contract
from devtools.rabbitnode import Node, NodeSpec, free_port
from tests.support.gateway import TOKEN, gateway_env
from tests.support.loadcheck import Verdict, checker_queue, classify, collect, markers, send_load
from tests.support.processes import GatewayProcess

pytestmark = pytest.mark.cluster

LOAD = 3000
CONCURRENCY = 64
# The local RabbitMQ 3.10 lacks the `default_queue_type = quorum` of
# deploy/rabbitmq-cluster.conf; a vhost with that default does the same here. It matters for
# the gateway's own `aifi.unrouted`, declared without a type: as a classic queue it would
# live on one node only, and once that node died no survivor would let the gateway
# re-declare it, so the gateway could reconnect nowhere.
VHOST = "aifi-cluster"
NODES = 3


def vhost_url(node: Node) -> str:
    return f"{node.url}{VHOST}"


def on_each(nodes: list[Node], action: Callable[[Node], None]) -> None:
    """Run action on every node at once: a node boots or stops in seconds, mostly waiting."""
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(action, nodes))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    """Three clustered nodes with a quorum-by-default vhost; this module may kill any of them."""
    base = tmp_path_factory.mktemp("cluster")
    # Unique names: epmd refuses a name already registered, e.g. by a concurrent run.
    run = uuid.uuid4().hex[:6]
    nodes = [
        Node(NodeSpec(f"aifi-cluster-{run}-{i}", free_port(), free_port(), base))
        for i in range(1, NODES + 1)
    ]
    try:
        on_each(nodes, Node.start)
        for node in nodes[1:]:
            node.join_cluster(nodes[0])
        nodes[0].ctl("add_vhost", VHOST, "--default-queue-type", "quorum")
        nodes[0].ctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
        yield nodes
    finally:
        on_each(nodes, Node.stop)


def queue_members(node: Node, name: str) -> set[str]:
    """The nodes holding a replica of queue `name`, as the cluster sees it."""
    out = node.ctl("list_queues", "-p", VHOST, "name", "members", "--formatter", "json", "-q")
    return {m for q in json.loads(out) if q["name"] == name for m in q["members"]}


@pytest.fixture
async def queue_name(cluster: list[Node]) -> str:
    """A durable quorum queue bound to `#`: the checker's view of everything published."""
    return await checker_queue(vhost_url(cluster[0]), "cluster", {"x-queue-type": "quorum"})


@pytest.fixture
def gateway(cluster: list[Node], tmp_path: Path) -> Iterator[GatewayProcess]:
    env = gateway_env(
        ",".join(vhost_url(node) for node in cluster),
        tmp_path / "spool",
        AIFI_AMQP_PUBLISH_TIMEOUT_S="2",
        AIFI_AMQP_RECONNECT_MAX_S="0.5",
        # INFO keeps the gateway's connect/lost/connected lines in its log: what to read
        # when this test fails.
        AIFI_LOG_LEVEL="INFO",
    )
    process = GatewayProcess(free_port(), env, tmp_path / "gateway.log")
    process.start()
    yield process
    process.stop()


def gateway_node(ask: Node, among: list[Node], timeout_s: float = 30.0) -> Node:
    """The node among `among` that holds the gateway's AMQP connection, once it has one.

    `list_connections` on any node lists the whole cluster's; the server-side port of a
    connection tells which node accepted it. The gateway is the only client meanwhile.
    """
    by_port = {node.spec.amqp_port: node for node in among}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = ask.ctl("list_connections", "port", "-q", "--no-table-headers")
        found = [by_port[int(p)] for p in out.split() if int(p) in by_port]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"the gateway has no connection to any of {[n.nodename for n in among]}")


async def wait_for_depth(amqp_url: str, queue_name: str, depth: int, timeout_s: float = 30) -> None:
    """Return once `depth` events are on the queue: the victim then demonstrably carried
    traffic, so killing it is a fault in the middle of the stream, not before it."""
    connection = await aio_pika.connect(amqp_url)
    async with connection, connection.channel() as channel, asyncio.timeout(timeout_s):
        while True:
            queue = await channel.declare_queue(queue_name, passive=True)
            if (queue.declaration_result.message_count or 0) >= depth:
                return
            await asyncio.sleep(0.02)


async def test_gateway_node_sigkill_mid_load_loses_nothing(
    cluster: list[Node],
    queue_name: str,
    gateway: GatewayProcess,
    checker_report: Callable[[str, Verdict], None],
) -> None:
    everyone = {node.nodename for node in cluster}
    assert queue_members(cluster[0], queue_name) == everyone
    victim = await asyncio.to_thread(gateway_node, cluster[-1], cluster)
    survivors = [node for node in cluster if node is not victim]
    survivor_url = vhost_url(survivors[0])
    assert queue_members(cluster[0], contract.UNROUTED_QUEUE) == everyone

    run = f"cluster-{uuid.uuid4().hex[:8]}"
    sent_markers = markers(run, LOAD)
    url = f"{gateway.url}/webhooks/aifi/entered"
    load = asyncio.create_task(send_load(url, TOKEN, sent_markers, CONCURRENCY))
    await wait_for_depth(survivor_url, queue_name, LOAD // 10)
    assert not load.done(), "the load ended before the fault: it would prove nothing"
    await asyncio.to_thread(victim.kill)
    sent = await load

    # The victim stays down: delivery from here on can only go through a survivor.
    await asyncio.to_thread(gateway_node, survivors[0], survivors)
    arrived = await collect(survivor_url, queue_name, run, sent.acknowledged, timeout_s=90)
    verdict = classify(sent_markers, sent, arrived)
    checker_report(f"kill {victim.nodename}", verdict)

    assert not verdict.lost, f"lost {len(verdict.lost)}: {sorted(verdict.lost)[:5]}"
    assert not verdict.unexpected
    assert not verdict.wrong_ids
    assert verdict.acknowledged >= LOAD // 4, "the load hardly ran; the fault proved nothing"
