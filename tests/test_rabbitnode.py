"""A private node survives a real crash (SIGKILL) and restarts on the same data."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.rabbitnode import SERVER, Node, NodeSpec, amqp_reachable, free_port

pytestmark = pytest.mark.broker


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    # A unique name: epmd refuses a second node with a name that is already registered.
    spec = NodeSpec(f"t-{uuid.uuid4().hex[:8]}", free_port(), free_port(), tmp_path)
    node = Node(spec)
    try:
        yield node
    finally:
        node.kill()


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
