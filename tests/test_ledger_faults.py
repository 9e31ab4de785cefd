"""The ledger on PostgreSQL under real faults, with two `aifi-consumer` processes competing
for one queue: one of them killed (SIGKILL) mid-batch, PostgreSQL stopped mid-stream and
started again, the broker killed and restarted. After each, the ledger equals the reference
model of the events sent: nothing lost, nothing applied twice."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import psycopg
import pytest
import yaml

from consumers import testing, topology
from core.amqp import declare_topology
from core.contract import Event, Outbound, dead_queue_name
from core.settings import ConsumerSettings, LedgerSettings
from devtools import pgnode
from devtools.rabbitnode import Node, free_port
from tests.support import broker, ledger_reference as reference, ledger_schema as schema
from tests.support.consumer import Scratch
from tests.support.processes import child_environ
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BASE = ConsumerSettings(prefetch=64, max_attempts=3, retry_base_ms=50, retry_max_ms=100)
SESSIONS = 2000


def stream(store: int) -> tuple[list[Outbound], list[Event]]:
    """What is published (twins, exits before entries, tracking, redeliveries: the same
    message twice) and the distinct events that makes."""
    rng = random.Random(store)
    published: list[Outbound] = []
    for n in range(SESSIONS):
        session, group = f"f{n}", rng.choice([1, 1, 2])
        published += [testing.transition("entered", store, session) for _ in range(group)]
        published += [testing.transition("exited", store, session) for _ in range(group)]
        if n % 3 == 0:
            published.append(testing.tracking(store, f"fu{n}", rng.choice([None, f"p{n}"])))
    rng.shuffle(published)
    published += rng.sample(published, len(published) // 10)
    return published, [Event.from_body(outbound.body) for outbound in published]


class Workers:
    """`python -m consumers NAME` processes, each with its own health port and log."""

    def __init__(self, folder: Path, name: str, settings: ConsumerSettings, env: dict[str, str]):
        self.folder, self.name, self.settings, self.env = folder, name, settings, env
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []

    def start(self) -> int:
        index, port = len(self.processes), free_port()
        config = self.folder / f"config-{index}.yaml"
        consumer = self.settings.model_copy(update={"health_port": port})
        config.write_text(
            yaml.safe_dump({"consumers": {self.name: consumer.model_dump(mode="json")}})
        )
        with (self.folder / f"worker-{index}.log").open("wb") as log:
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "consumers", self.name],
                    cwd=ROOT,
                    env=self.env | {"AIFI_CONFIG": str(config)},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        self.ports.append(port)
        return index

    async def health(self, index: int) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.ports[index]}/healthz"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.json()

    async def consuming(self, index: int) -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            return (await self.health(index))[0] == 200
        return False

    async def stop_all(self) -> list[int]:
        """SIGTERM to the workers still running; their exit codes."""
        live = [process for process in self.processes if process.poll() is None]
        for process in live:
            process.send_signal(signal.SIGTERM)
        return [await asyncio.to_thread(process.wait, 30) for process in live]

    def stopped(self, index: int) -> dict[str, Any]:
        """The state worker `index` logged as it stopped."""
        lines = [orjson.loads(line) for line in self.log(index).splitlines() if line[:1] == "{"]
        [state] = [line for line in lines if line["message"] == "stopped"]
        return dict(state)

    def kill_all(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(10)

    def log(self, index: int) -> str:
        return (self.folder / f"worker-{index}.log").read_text(errors="replace")


@contextlib.asynccontextmanager
async def two_workers(
    tmp_path: Path, amqp_url: str, ledger_url: str, store: int, outbounds: list[Outbound]
) -> AsyncIterator[tuple[Workers, str]]:
    """Two workers of one consumer of this test's own, started once its queue holds
    `outbounds`, consuming; killed at the end if still running."""
    made = Scratch(amqp_url, BASE)
    name, settings = made.consumer(f"entered.{store}", f"exited.{store}", f"tracking.{store}")
    connection = await aio_pika.connect(amqp_url)
    async with connection, connection.channel() as channel:
        await declare_topology(channel)
        await topology.declare(channel, name, settings)
        await broker.publish(channel, outbounds)
    env = child_environ() | {"AIFI_AMQP_URL": amqp_url, "AIFI_LEDGER_URL": ledger_url}
    workers = Workers(tmp_path, name, settings, env)
    try:
        for index in (workers.start(), workers.start()):
            await eventually(functools.partial(workers.consuming, index), 30, f"worker {index}")
        yield workers, name
    finally:
        workers.kill_all()
        with contextlib.suppress(Exception):  # the broker may be the one that failed
            await made.delete()


async def processed_at_least(settings: LedgerSettings, count: int) -> bool:
    """Whether the ledger holds `count` events; False while its database is away."""
    try:
        return await schema.processed(settings) >= count
    except psycopg.OperationalError:
        await asyncio.sleep(0.2)
        return False


async def settled(
    workers: Workers, settings: LedgerSettings, events: list[Event], dead: str
) -> None:
    """Wait for every event to be applied, stop the workers, and check the ledger."""
    total = len(reference.distinct(events))
    await eventually(lambda: processed_at_least(settings, total), 240, f"{total} events")
    assert set(await workers.stop_all()) == {0}
    assert await reference.differences(settings, events) == []
    connection = await aio_pika.connect(workers.env["AIFI_AMQP_URL"])
    async with connection, connection.channel() as channel:
        assert await broker.depth(channel, dead) == 0, "nothing dead-lettered"


async def test_sigkill_of_one_of_two_workers_mid_batch(
    amqp_url: str, pg_url: str, tmp_path: Path, store: int
) -> None:
    outbounds, events = stream(store)
    settings = LedgerSettings(url=pg_url)
    async with two_workers(tmp_path, amqp_url, pg_url, store, outbounds) as (workers, name):
        await eventually(lambda: processed_at_least(settings, 200), 60, "progress")
        workers.processes[0].kill()
        assert await asyncio.to_thread(workers.processes[0].wait, 10) == -signal.SIGKILL
        assert await schema.processed(settings) < len(reference.distinct(events))  # mid-stream
        await settled(workers, settings, events, dead_queue_name(name))
        assert workers.stopped(1)["redelivered"] > 0  # what the killed one held came back


async def test_postgresql_stopped_and_restarted_mid_stream(
    amqp_url: str, private_pg: pgnode.PgNode, tmp_path: Path, store: int
) -> None:
    outbounds, events = stream(store)
    settings = LedgerSettings(url=private_pg.url)
    async with two_workers(tmp_path, amqp_url, private_pg.url, store, outbounds) as (workers, name):
        await eventually(lambda: processed_at_least(settings, 200), 60, "progress")
        await asyncio.to_thread(private_pg.stop, "immediate")
        for index in (0, 1):
            await eventually(functools.partial(waiting, workers, index), 60, "a 503")
        await asyncio.sleep(2)  # down for a while, workers retrying meanwhile
        await asyncio.to_thread(private_pg.start)
        await settled(workers, settings, events, dead_queue_name(name))
        assert "ledger available again" in workers.log(0) + workers.log(1)


async def waiting(workers: Workers, index: int) -> bool:
    """Whether worker `index` says on /healthz (503) that it waits for its ledger."""
    status, body = await workers.health(index)
    return status == 503 and str(body["waiting"]).startswith("ledger unavailable: ")


async def test_the_broker_restarted_mid_stream(
    private_node: Node, pg_url: str, tmp_path: Path, store: int
) -> None:
    outbounds, events = stream(store)
    settings = LedgerSettings(url=pg_url)
    async with two_workers(tmp_path, private_node.url, pg_url, store, outbounds) as (workers, name):
        await eventually(lambda: processed_at_least(settings, 200), 60, "progress")
        await asyncio.to_thread(private_node.kill)
        assert await schema.processed(settings) < len(reference.distinct(events))  # mid-stream
        await asyncio.to_thread(private_node.start, 120)
        await settled(workers, settings, events, dead_queue_name(name))
