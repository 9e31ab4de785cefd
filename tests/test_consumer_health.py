"""The health endpoint: consumer state as JSON, 503 until the worker consumes."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from consumers import health
from consumers.state import ConsumerState
from devtools.rabbitnode import free_port


async def test_healthz_reports_the_state_and_is_503_until_consuming() -> None:
    state = ConsumerState("entered")
    async with TestClient(TestServer(health.create_app(state))) as client:
        response = await client.get("/healthz")
        assert response.status == 503
        assert (await response.json())["consumer"] == "entered"
        state.connected = state.consuming = True
        state.acked, state.dead_lettered = 7, 1
        response = await client.get("/healthz")
        body = await response.json()
    assert response.status == 200
    assert response.content_type == "application/json"
    assert (body["connected"], body["consuming"], body["acked"], body["dead_lettered"]) == (
        True,
        True,
        7,
        1,
    )
    assert set(body) >= {
        "starting",
        "reconnects",
        "received",
        "redelivered",
        "retried",
        "requeued",
        "batches",
        "last_error",
        "started_at",
    }


async def test_healthz_says_what_a_starting_worker_waits_for() -> None:
    state = ConsumerState("tracking")
    state.starting = "opening ledger: database is locked, retrying in 0.4 s"
    async with TestClient(TestServer(health.create_app(state))) as client:
        response = await client.get("/healthz")
        body = await response.json()
    assert response.status == 503
    assert body["starting"] == "opening ledger: database is locked, retrying in 0.4 s"


async def test_serving_listens_only_for_the_block() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    async with aiohttp.ClientSession() as session:
        async with (
            health.serving(ConsumerState("x"), "127.0.0.1", port),
            session.get(url) as response,
        ):
            assert response.status == 503
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url)


def listening_sockets_of_this_process() -> set[int]:
    """Inodes of the TCP sockets this process listens on (state 0A in /proc/net/tcp*)."""
    listening = {
        int(fields[9])
        for table in ("tcp", "tcp6")
        for fields in map(str.split, Path(f"/proc/net/{table}").read_text().splitlines()[1:])
        if fields[3] == "0A"
    }
    return {inode for inode in listening if f"socket:[{inode}]" in open_files()}


def open_files() -> set[str]:
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the descriptor of the listing itself is gone
            found.add(os.readlink(fd))
    return found


async def test_port_0_serves_nothing() -> None:
    before = listening_sockets_of_this_process()
    async with health.serving(ConsumerState("x"), "127.0.0.1", 0):
        assert listening_sockets_of_this_process() == before
    # The same check sees a port that is served.
    async with health.serving(ConsumerState("x"), "127.0.0.1", free_port()):
        assert len(listening_sockets_of_this_process() - before) == 1


async def test_metrics_report_outcomes_state_and_handler_time() -> None:
    state = ConsumerState("exited")
    state.connected = True
    state.acked, state.retried, state.dead_lettered = 5, 2, 1
    state.cancels = 3
    state.waiting = "ledger unavailable: connection refused"
    state.queued = {"aifi.exited": 4, "aifi.unrouted": 1}
    with state.timing():
        pass
    async with TestClient(TestServer(health.create_app(state))) as client:
        response = await client.get("/metrics")
        text = await response.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("aifi_consumer_cancels_total", (("consumer", "exited"),))] == 3
    outcome = (("consumer", "exited"), ("outcome", "acked"))
    assert samples[("aifi_consumer_messages_total", outcome)] == 5
    retried = (("consumer", "exited"), ("outcome", "retried"))
    assert samples[("aifi_consumer_messages_total", retried)] == 2
    assert samples[("aifi_consumer_connected", (("consumer", "exited"),))] == 1
    assert samples[("aifi_consumer_consuming", (("consumer", "exited"),))] == 0
    assert samples[("aifi_consumer_waiting", (("consumer", "exited"),))] == 1
    assert samples[("aifi_consumer_starting", (("consumer", "exited"),))] == 0
    unrouted = (("consumer", "exited"), ("queue", "aifi.unrouted"))
    assert samples[("aifi_consumer_queue_messages", unrouted)] == 1
    assert samples[("aifi_consumer_handler_seconds_count", (("consumer", "exited"),))] == 1


async def test_a_port_in_use_is_said_as_such() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        with pytest.raises(health.HealthPortError, match=f"127.0.0.1:{port}"):
            async with health.serving(ConsumerState("x"), "127.0.0.1", port):
                pass
