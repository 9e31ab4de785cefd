"""Private nodes: a node survives a real crash (SIGKILL) and restarts on the same data; a
node belongs to the process that started it, and no other command stops it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.rabbitnode import (
    MARKER,
    Node,
    NodeSpec,
    Owner,
    _write_marker,
    amqp_reachable,
    broker_for,
    ensure_installed,
    free_port,
)

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent


def unique_name() -> str:
    # epmd refuses a second node with a name that is already registered.
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    ensure_installed()
    node = Node(NodeSpec(unique_name(), free_port(), free_port(), tmp_path))
    try:
        yield node
    finally:
        node.kill()


def rabbitnode(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m devtools.rabbitnode ARGS` as another command would run it."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "devtools.rabbitnode", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def dead_owner() -> Owner:
    """The owner record of a process that has exited (as after a SIGKILL)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = Owner.from_pid(child.pid)
    child.kill()
    child.wait()
    return owner


def test_kill_then_start_keeps_data(node: Node) -> None:
    node.start()
    assert node.is_running()
    assert amqp_reachable(node.url)
    # A vhost is durable metadata: seeing it after the restart proves the data dir was reused.
    node.ctl("add_vhost", "survives-crash")

    node.kill()
    assert not node.is_running()
    assert not amqp_reachable(node.url)

    node.start()
    assert node.is_running()
    assert amqp_reachable(node.url)
    assert "survives-crash" in node.ctl("list_vhosts", "--quiet").split()


def test_kill_and_stop_are_idempotent(node: Node) -> None:
    node.kill()
    node.stop()
    assert not node.is_running()


def test_stop_leaves_alone_a_node_that_a_live_process_owns(tmp_path: Path) -> None:
    url, name = f"amqp://guest:guest@127.0.0.1:{free_port()}/", unique_name()
    with broker_for(url, tmp_path, name) as owned:
        assert owned is not None
        assert amqp_reachable(url)

        refused = rabbitnode("stop", "--dir", str(tmp_path), "--name", name)

        assert refused.returncode == 1
        assert f"belongs to process {os.getpid()}" in refused.stderr
        assert owned.is_running()
        assert amqp_reachable(url)
    # The owner stops it when its block ends.
    assert not owned.is_running()
    assert not amqp_reachable(url)
    assert not (tmp_path / name / MARKER).exists()


def test_broker_for_leaves_running_a_broker_it_did_not_start(node: Node, tmp_path: Path) -> None:
    node.start()
    with broker_for(node.url, tmp_path / "other") as owned:
        assert owned is None
    assert node.is_running()
    assert amqp_reachable(node.url)


def test_broker_for_takes_over_a_node_whose_owner_died(node: Node) -> None:
    # As after a `make run` killed by SIGKILL: its node runs on, its owner is gone.
    _write_marker(node.spec, dead_owner())
    node.start()

    with broker_for(node.url, node.spec.base_dir, node.spec.name) as owned:
        assert owned is not None
        assert owned.is_running()
    assert not node.is_running()


def test_with_runs_the_command_and_stops_the_node_it_started(tmp_path: Path) -> None:
    port, name = free_port(), unique_name()
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 5).close()"

    done = rabbitnode(
        "with",
        "--url",
        url,
        "--dir",
        str(tmp_path),
        "--name",
        name,
        "--",
        sys.executable,
        "-c",
        probe,
    )

    assert done.returncode == 0, done.stderr
    assert not amqp_reachable(url)
    assert not Node(NodeSpec(name, port, 1, tmp_path)).is_running()
