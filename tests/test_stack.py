"""`make run`'s supervisor for real: it starts its own broker, refuses a second instance in
the same checkout without touching the first, and stops everything on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from core import contract
from core.settings import load
from devtools import procs, stack
from devtools.rabbitnode import Node, NodeSpec, amqp_reachable, ensure_installed, free_port
from tests.support.gateway import CONFIG
from tests.support.processes import child_environ

ROOT = Path(__file__).resolve().parent.parent
UP_TIMEOUT_S = 180.0
DOWN_TIMEOUT_S = 90.0


@dataclass
class Checkout:
    """A stand-in for a checkout: a working directory with its own data/ and .rabbitmq/,
    and the settings `make run` would be given, all on free ports."""

    cwd: Path
    env: dict[str, str]
    node_name: str
    amqp_port: int
    http_port: int

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "devtools.stack", "--node-name", self.node_name]

    @property
    def node(self) -> Node:
        # Only the pid file's path identifies a node; the distribution port is not needed.
        return Node(NodeSpec(self.node_name, self.amqp_port, 0, self.cwd / ".rabbitmq"))

    def start(self, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    amqp_port, http_port = free_port(), free_port()
    env = child_environ() | {
        "PYTHONPATH": str(ROOT),
        "AIFI_CONFIG": str(CONFIG),
        "AIFI_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{amqp_port}/",
        "AIFI_HTTP_PORT": str(http_port),
        "AIFI_LOG_LEVEL": "WARNING",
    }
    for name in ("ENTERED", "EXITED", "TRACKING"):
        env[f"AIFI_CONSUMERS_{name}_HEALTH_PORT"] = str(free_port())
    env["AIFI_PRESENCE_PORT"] = str(free_port())
    return Checkout(tmp_path, env, f"t-{uuid.uuid4().hex[:8]}", amqp_port, http_port)


@pytest.fixture
def running(checkout: Checkout, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A stack up and serving; whatever the test leaves of it is killed, node included."""
    ensure_installed()
    log = tmp_path / "stack.log"
    process = checkout.start(log)
    try:
        wait_for(lambda: "The stack is up" in log.read_text(), UP_TIMEOUT_S, process, log)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        checkout.node.kill()


def wait_for(
    done: Callable[[], bool], timeout_s: float, process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the stack is not up (exit {process.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def parents() -> dict[int, int]:
    """Parent of every live process."""
    return {found.pid: found.ppid for found in procs.everyone()}


def children_of(pid: int) -> list[int]:
    return [child for child, parent in parents().items() if parent == pid]


def descendants_of(pid: int) -> list[int]:
    found, todo, tree = [], [pid], parents()
    while todo:
        pid = todo.pop()
        kids = [child for child, parent in tree.items() if parent == pid]
        found += kids
        todo += kids
    return found


def command_names(pids: list[int]) -> set[str]:
    names = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


def alive(pid: int) -> bool:
    return procs.living(pid) is not None


def gateway_answers(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return int(response.status) == 200


# Starts a broker, three workers and a gateway.
@pytest.mark.slow
def test_sighup_stops_the_workers_the_gateway_and_the_broker_it_started(
    checkout: Checkout, running: subprocess.Popen[bytes]
) -> None:
    started = descendants_of(running.pid)
    # Three workers, the gateway, the presence API, and the broker: its launcher and the
    # Erlang VM.
    assert {"aifi-consumer", "aifi-gateway", "aifi-presence", "beam.smp"} <= command_names(started)
    node = checkout.node
    assert node.is_running()

    running.send_signal(signal.SIGHUP)  # what closing the terminal sends

    assert running.wait(timeout=DOWN_TIMEOUT_S) == 0
    assert [pid for pid in started if alive(pid)] == []
    assert not node.is_running()
    assert not amqp_reachable(f"amqp://127.0.0.1:{checkout.amqp_port}/")


@pytest.mark.slow
def test_a_second_stack_refuses_at_once_and_leaves_the_first_alone(
    checkout: Checkout, running: subprocess.Popen[bytes]
) -> None:
    children = children_of(running.pid)

    second = subprocess.run(
        checkout.command,
        cwd=checkout.cwd,
        env=checkout.env,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert second.returncode == 1
    assert "already running" in second.stderr
    assert f"pid {running.pid}" in second.stderr
    assert f"gateway 127.0.0.1:{checkout.http_port}" in second.stderr
    assert "The stack is up" not in second.stdout
    assert running.poll() is None
    assert all(alive(pid) for pid in children)
    assert checkout.node.is_running()
    assert gateway_answers(checkout.http_port)


def test_a_busy_port_is_refused_before_anything_starts(checkout: Checkout) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", checkout.http_port))
        squatter.listen()

        refused = subprocess.run(
            checkout.command,
            cwd=checkout.cwd,
            env=checkout.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert refused.returncode == 1
    assert f"gateway 127.0.0.1:{checkout.http_port}" in refused.stderr
    assert not (checkout.cwd / ".rabbitmq").exists()
    assert not amqp_reachable(f"amqp://127.0.0.1:{checkout.amqp_port}/")


def test_listen_ports_name_the_gateway_each_health_endpoint_and_the_presence_api() -> None:
    settings = load({"AIFI_CONFIG": str(CONFIG), "AIFI_CONSUMERS_EXITED_HEALTH_PORT": "0"})
    assert stack.listen_ports(settings) == {
        "gateway": ("127.0.0.1", 8080),
        "entered worker health": ("127.0.0.1", 8081),
        "tracking worker health": ("127.0.0.1", 8083),
        "presence API": ("127.0.0.1", 8090),
    }


def test_the_stack_runs_the_presence_api_with_a_token_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("AIFI_TOKENS", "AIFI_PRESENCE_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    env = stack.child_env()
    presence = (tmp_path / stack.PRESENCE_TOKEN_FILE).read_text()
    assert env["AIFI_PRESENCE_TOKENS"] == f"dev={presence}"
    assert presence not in env["AIFI_TOKENS"]
    assert any(command[-1].endswith("aifi-presence") for command in stack.commands())
    banner = stack.banner(load({"AIFI_CONFIG": str(CONFIG)}))
    assert "http://127.0.0.1:8090/stores" in banner
    assert presence not in banner


async def declare_unrouted_as_before(url: str) -> None:
    """`aifi.unrouted` as a release before the explicit delivery limit declared it, one
    event waiting in it."""
    connection = await aio_pika.connect(url)
    async with connection, connection.channel() as channel:
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        await channel.declare_queue(contract.UNROUTED_QUEUE, durable=True, arguments=arguments)
        message = aio_pika.Message(b"{}", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, routing_key=contract.UNROUTED_QUEUE)


async def unrouted_depth(url: str) -> int:
    connection = await aio_pika.connect(url)
    async with connection, connection.channel() as channel:
        queue = await channel.declare_queue(contract.UNROUTED_QUEUE, passive=True)
        return queue.declaration_result.message_count or 0


# Starts a broker, three workers and a gateway.
@pytest.mark.slow
def test_queues_an_earlier_checkout_declared_are_migrated_before_anything_starts(
    checkout: Checkout, tmp_path: Path
) -> None:
    ensure_installed()
    node = Node(
        NodeSpec(checkout.node_name, checkout.amqp_port, free_port(), checkout.node.spec.base_dir)
    )
    node.start(timeout_s=120)
    try:
        asyncio.run(declare_unrouted_as_before(node.url))
        log = tmp_path / "stack.log"
        process = checkout.start(log)
        try:
            wait_for(lambda: "The stack is up" in log.read_text(), UP_TIMEOUT_S, process, log)
            assert "queues migrated to this release's arguments" in log.read_text()
            assert asyncio.run(unrouted_depth(node.url)) == 1
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    finally:
        node.kill()


def test_a_development_token_is_made_once_and_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "data" / "dev-token"
    token = stack.dev_token(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(token) >= 32
    assert stack.dev_token(path) == token
