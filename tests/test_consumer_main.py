"""`python -m consumers NAME` as a process: SIGKILL and SIGTERM mid-batch, config errors,
a downstream team's handler named in the config, and a ledger that is locked or broken."""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractChannel

from consumers import testing, topology
from consumers.__main__ import parse
from core.contract import dead_queue_name, queue_name
from core.settings import ConsumerSettings
from devtools.rabbitnode import free_port
from tests.support import broker
from tests.support.consumer import Launcher, Scratch, WorkerProcess
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
BASE = ConsumerSettings(prefetch=64, max_attempts=3, retry_base_ms=50, retry_max_ms=100)


@pytest.fixture
def consumer_base() -> ConsumerSettings:
    """The settings `scratch` makes this module's consumers from."""
    return BASE


COUNT = 2000  # events in a stream that a worker is stopped in the middle of


async def exited(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int:
    await eventually(lambda: process.poll() is not None, timeout_s, "the process to exit")
    return process.wait()


async def test_sigkill_mid_batch_loses_no_event_and_counts_none_twice(
    channel: AbstractChannel, scratch: Scratch, launcher: Launcher, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}", f"exited.{store}")
    await topology.declare(channel, name, settings)
    entries = [testing.transition("entered", store, f"s{i}") for i in range(1800)]
    twins = [testing.transition("exited", store, f"s{i // 2}") for i in range(1200)]
    await broker.publish(channel, entries + twins)
    worker = launcher({name: settings})
    first = worker.start(name)
    await eventually(lambda: worker.processed() >= 300, what="progress")
    first.kill()
    assert await exited(first) == -signal.SIGKILL
    assert worker.processed() < len(entries) + len(twins)  # killed mid-stream
    second = worker.start(name)
    await eventually(lambda: worker.processed() == 3000, 30, "every event")
    second.send_signal(signal.SIGTERM)
    assert await exited(second) == 0
    assert worker.stopped(1)["redelivered"] > 0  # deliveries in hand at the kill came back
    assert worker.query("SELECT sum(persons_entered), sum(persons_exited) FROM visits") == [
        (1800, 1200)
    ]
    assert await broker.depth(channel, queue_name(name)) == 0
    assert await broker.depth(channel, dead_queue_name(name)) == 0


async def test_sigterm_mid_batch_settles_what_is_in_hand_and_exits_0(
    channel: AbstractChannel, scratch: Scratch, launcher: Launcher, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    await topology.declare(channel, name, settings)
    await broker.publish(
        channel, [testing.transition("entered", store, f"s{i}") for i in range(COUNT)]
    )
    worker = launcher({name: settings})
    process = worker.start(name)
    await eventually(lambda: worker.processed() >= 300, what="progress")
    process.send_signal(signal.SIGTERM)
    assert await exited(process) == 0
    done, stopped = worker.processed(), worker.stopped(0)
    assert done < COUNT  # stopped mid-stream
    # Every delivery it took in hand was applied and acked; none was left to the broker.
    assert stopped["received"] == stopped["acked"] == done
    assert "stopping: settling deliveries in hand" in [m["message"] for m in worker.log_lines(0)]
    remaining = await broker.drain(channel, queue_name(name))
    processed_ids = {row[0] for row in worker.query("SELECT event_id FROM processed")}
    assert not processed_ids & {message.message_id for message in remaining}
    assert len(remaining) == COUNT - done
    # Only what a quorum queue sent after cancel-ok, which never reached the worker, is
    # marked redelivered; at most a prefetch window of it.
    assert sum(bool(message.redelivered) for message in remaining) <= settings.prefetch


async def health(port: int) -> dict[str, Any] | None:
    answer = await healthz(port)
    return None if answer is None else answer[1]


async def healthz(port: int) -> tuple[int, dict[str, Any]] | None:
    """The status and body of the worker's /healthz; None while nothing listens."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as response,
        ):
            body: dict[str, Any] = await response.json()
            return response.status, body
    except aiohttp.ClientConnectionError:
        return None


async def test_a_handler_named_in_the_config_runs_and_reports_its_health(
    channel: AbstractChannel, scratch: Scratch, launcher: Launcher, store: int
) -> None:
    port = free_port()
    name, settings = scratch.consumer(
        f"entered.{store}",
        f"tracking.{store}",
        handler="consumers.examples.print_handler:handle",
        health_port=port,
    )
    worker = launcher({name: settings})
    process = worker.start(name)
    await eventually(lambda: consuming(port), what="the worker to consume")
    entries = [testing.transition("entered", store, f"s{i}") for i in range(3)]
    await broker.publish(channel, [*entries, testing.tracking(store, "u-1", None)])
    await eventually(lambda: settled(port, acked=3, dead_lettered=1), what="settlement")
    process.send_signal(signal.SIGTERM)
    assert await exited(process) == 0
    assert process.stdout is not None
    printed = [orjson.loads(line) for line in process.stdout.read().splitlines()]
    assert sorted(line["id"] for line in printed) == sorted(e.message_id for e in entries)
    assert {(line["kind"], line["store"]) for line in printed} == {("entered", store)}


async def consuming(port: int) -> bool:
    body = await health(port)
    return body is not None and body["consuming"] is True


async def settled(port: int, **counters: int | None) -> bool:
    body = await health(port)
    return body is not None and all(body[k] == v for k, v in counters.items())


@pytest.mark.parametrize(
    ("consumers", "name", "complaint"),
    [
        ({}, "nosuch", "no consumer 'nosuch'"),
        ({}, "no.dots", "must match"),
        (
            {"bad": ConsumerSettings(handler="consumers.examples.print_handler:missing")},
            "bad",
            "is not an `async def` function",
        ),
        ({"bad": ConsumerSettings(handler="consumers.nowhere:handle")}, "bad", "cannot import"),
    ],
)
async def test_a_configuration_error_exits_2_naming_it(
    launcher: Launcher, consumers: dict[str, ConsumerSettings], name: str, complaint: str
) -> None:
    worker = launcher(consumers)
    process = worker.start(name)
    assert await exited(process) == 2
    assert complaint in (worker.logs / "0.log").read_text()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's view of the ledger: an exclusive transaction held until it ends."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        yield holder


def locked_ledger_worker(
    launcher: Launcher, name: str, settings: ConsumerSettings
) -> WorkerProcess:
    worker = launcher({name: settings})
    worker.env["AIFI_LEDGER_BUSY_TIMEOUT_MS"] = "50"
    return worker


def retries(worker: WorkerProcess) -> int:
    return worker.messages(0).count("ledger busy; retrying")


async def test_a_worker_waits_for_a_locked_ledger_says_so_and_proceeds_once_released(
    channel: AbstractChannel, scratch: Scratch, launcher: Launcher, store: int
) -> None:
    port = free_port()
    name, settings = scratch.consumer(f"entered.{store}", health_port=port)
    worker = locked_ledger_worker(launcher, name, settings)
    with locked(worker.db) as holder:
        process = worker.start(name)
        await eventually(lambda: retries(worker) >= 3, what="the worker to retry")
        answer = await healthz(port)
        assert answer is not None
        status, body = answer
        assert status == 503
        assert body["starting"].startswith("opening ledger: database is locked, retrying in ")
        assert process.poll() is None
        holder.execute("ROLLBACK")
    await eventually(lambda: consuming(port), what="the worker to consume")
    assert await settled(port, starting=None)
    await broker.publish(channel, [testing.transition("entered", store, "s1")])
    await eventually(lambda: worker.processed() == 1, what="the event applied")
    process.send_signal(signal.SIGTERM)
    assert await exited(process) == 0
    assert "ledger open" in worker.messages(0)


async def test_a_worker_stopped_while_its_ledger_is_locked_exits_0(
    scratch: Scratch, launcher: Launcher, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    worker = locked_ledger_worker(launcher, name, settings)
    with locked(worker.db):
        process = worker.start(name)
        await eventually(lambda: retries(worker) >= 1, what="the worker to retry")
        process.send_signal(signal.SIGTERM)
        assert await exited(process) == 0
    assert worker.stopped(0)["consuming"] is False
    assert "ledger open" not in worker.messages(0)


async def test_a_ledger_that_cannot_be_opened_exits_1_naming_it(
    scratch: Scratch, launcher: Launcher, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    worker = launcher({name: settings})
    worker.db.write_bytes(b"not a database" * 500)
    process = worker.start(name)
    assert await exited(process) == 1
    log = (worker.logs / "0.log").read_text()
    assert f"aifi-consumer: cannot open the ledger at {worker.db}: file is not a database" in log
    assert "Traceback" not in log


async def test_a_health_port_in_use_exits_1_saying_so_not_blaming_the_broker(
    scratch: Scratch, launcher: Launcher, store: int
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        name, settings = scratch.consumer(f"entered.{store}", health_port=port)
        worker = launcher({name: settings})
        assert await exited(worker.start(name)) == 1
    log = (worker.logs / "0.log").read_text()
    assert f"aifi-consumer: cannot serve /healthz on 127.0.0.1:{port}" in log
    assert "broker unavailable" not in log
    assert "Traceback" not in log


def test_the_commands_and_their_arguments_are_told_apart_from_a_worker_name() -> None:
    assert vars(parse(["entered"])) == {"name": "entered", "command": "run"}
    assert vars(parse(["replay", "entered", "--limit", "3"])) == {
        "name": "entered",
        "limit": 3,
        "command": "replay",
    }
    assert vars(parse(["migrate"])) == {"names": [], "command": "migrate"}
    assert vars(parse(["replay-unrouted"])) == {"limit": None, "command": "replay-unrouted"}
