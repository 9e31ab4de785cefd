"""A three-node RabbitMQ cluster whose nodes are separate hosts: each node lives in a
network namespace of its own (`tests.support.netns`), at a private address, named
`rabbit@<address>`; the test's clients reach them over a bridge from the host. A node can
be crashed (SIGKILL), cut off (`isolate`), or given a bad link to the host (`netem`)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devtools.rabbitnode import Node, NodeSpec
from tests.support.netns import Fabric, Host, in_netns

# The local RabbitMQ 3.10 lacks the `default_queue_type = quorum` of
# deploy/rabbitmq-cluster.conf; a vhost with that default does the same here. It matters for
# the gateway's own `aifi.unrouted`, declared without a type: as a classic queue it would
# live on one node only, and once that node died no survivor would let the gateway
# re-declare it, so the gateway could reconnect nowhere.
VHOST: Final = "aifi-cluster"
SIZE: Final = 3
AMQP_PORT: Final = 5672
DIST_PORT: Final = 25672
# `guest` may connect from loopback only by default, and the clients come over the bridge;
# the partition handling is deploy/rabbitmq-cluster.conf's.
NODE_CONF: Final = """\
loopback_users = none
cluster_partition_handling = pause_minority
"""


def on_each(nodes: list[Node], action: Callable[[Node], None]) -> None:
    """Run action on every node at once: a node boots or stops in seconds, mostly waiting."""
    if not nodes:
        return
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(action, nodes))


@dataclass(frozen=True)
class Cluster:
    fabric: Fabric
    nodes: list[Node]

    def host(self, node: Node) -> Host:
        return self.fabric.hosts[self.nodes.index(node)]

    def node_at(self, address: str) -> Node:
        [node] = [n for n in self.nodes if n.spec.host == address]
        return node

    def others(self, node: Node) -> list[Node]:
        return [n for n in self.nodes if n is not node]

    def running(self, ask: Node) -> set[str]:
        """The nodes that `ask` sees running in its cluster."""
        status = json.loads(ask.ctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def heal_all(self) -> None:
        """Every link clean and up, every node running and back in one cluster."""
        for host in self.fabric.hosts:
            in_netns(host.netns, "iptables", "-F")
            self.fabric.heal(host)
        on_each([n for n in self.nodes if not n.is_running()], Node.start)
        everyone = {node.nodename for node in self.nodes}
        wait_until(lambda: all(self.running(n) == everyone for n in self.nodes), 120)


def vhost_url(node: Node) -> str:
    return f"{node.url}{VHOST}"


def wait_until(done: Callable[[], bool], timeout_s: float, what: str = "the cluster") -> None:
    deadline = time.monotonic() + timeout_s
    while not _holds(done):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.5)


def _holds(done: Callable[[], bool]) -> bool:
    try:
        return done()
    except (RuntimeError, subprocess.CalledProcessError):  # a node booting or paused
        return False


def node_spec(host: Host, base_dir: Path) -> NodeSpec:
    return NodeSpec(
        "rabbit", AMQP_PORT, DIST_PORT, base_dir / host.address, NODE_CONF, host.address, host.netns
    )


@contextlib.contextmanager
def netns_cluster(base_dir: Path) -> Iterator[Cluster]:
    """Three clustered nodes, each in its namespace, with a quorum-by-default vhost; all
    of it (nodes, epmd, namespaces, bridge) removed at the end however the block ends."""
    with Fabric(SIZE) as fabric:
        nodes = [Node(node_spec(host, base_dir)) for host in fabric.hosts]
        try:
            on_each(nodes, Node.start)
            for node in nodes[1:]:
                node.join_cluster(nodes[0])
            nodes[0].ctl("add_vhost", VHOST, "--default-queue-type", "quorum")
            nodes[0].ctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
            yield Cluster(fabric, nodes)
        finally:
            on_each(nodes, Node.kill)
