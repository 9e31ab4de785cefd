"""End to end under faults: webhooks into a gateway process, two `aifi-consumer` processes
keeping the ledger on PostgreSQL, and a fault at each stage while the load runs (the gateway
SIGKILLed, the broker SIGKILLed, a worker SIGKILLed, PostgreSQL stopped). Then nothing
answered 200 is missing from the broker, and the ledger equals the reference model of
what the broker holds: each visit counted exactly once."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aio_pika
import aiohttp
import orjson
import pytest

from consumers import testing, topology
from core import contract
from core.amqp import declare_topology
from core.contract import Event
from core.settings import ConsumerSettings, LedgerSettings
from devtools import pgnode
from devtools.rabbitnode import Node, free_port
from tests.support import broker, ledger_reference as reference
from tests.support.consumer import Scratch
from tests.support.gateway import TOKEN, gateway_env
from tests.support.processes import GatewayProcess, child_environ
from tests.support.waiting import eventually
from tests.test_ledger_faults import Workers, processed_at_least, waiting

pytestmark = pytest.mark.slow

SESSIONS: Final = 500
CONCURRENCY: Final = 32
BASE: Final = ConsumerSettings(prefetch=64, max_attempts=3, retry_base_ms=50, retry_max_ms=100)
SETTLE_S: Final = 180.0
Fault = Callable[[], Awaitable[None]]


def webhooks(store: int) -> list[tuple[str, bytes]]:
    """(path, body): an entry and an exit per session, and a tracking call every third."""
    calls = []
    for n in range(SESSIONS):
        session = f"e2e-{store}-{n}"
        calls.append(("/webhooks/aifi/entered", testing.transition_body(store, session)))
        calls.append(("/webhooks/aifi/left", testing.transition_body(store, session)))
        if n % 3 == 0:
            calls.append(("/webhooks/aifi/tracking", tracking_body(store, f"e2e-{n}", f"p-{n}")))
    return calls


def tracking_body(store: int, unique_event_id: str, shopper_id: str) -> bytes:
    time = testing.ORIGIN.isoformat()
    return orjson.dumps(
        {
            "storeId": store,
            "store": {"oasisApiStoreId": store, "aifiUniqueStoreId": f"s-{store}"},
            "timeOfOrigin": time,
            "timeOfIssue": time,
            "shopperId": shopper_id,
            "uniqueEventId": unique_event_id,
        }
    )


def chunks(calls: list[tuple[str, bytes]], count: int) -> list[list[tuple[str, bytes]]]:
    size = -(-len(calls) // count)
    return [calls[i : i + size] for i in range(0, len(calls), size)]


@dataclass
class Answers:
    """The event id of every call answered 200, and how many calls were answered at all."""

    accepted: set[str] = field(default_factory=set)
    count: int = 0
    progressed: asyncio.Event = field(default_factory=asyncio.Event)

    async def until(self, count: int, timeout_s: float = 60.0) -> None:
        async with asyncio.timeout(timeout_s):
            while self.count < count:
                self.progressed.clear()
                await self.progressed.wait()


async def post_all(url: str, calls: list[tuple[str, bytes]], answers: Answers) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    slots = asyncio.Semaphore(CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:

        async def one(path: str, body: bytes) -> None:
            async with slots:
                status, event_id = await post_once(session, url + path, body)
                if status == 200:
                    answers.accepted.add(event_id)
                answers.count += 1
                answers.progressed.set()

        await asyncio.gather(*(one(path, body) for path, body in calls))


async def post_once(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, str]:
    """Status and event id; a call that never connected (the gateway restarting) is made
    again, as nothing of it was sent; one cut off after it was sent is not (no 200)."""
    for _ in range(600):
        try:
            async with session.post(url, data=body) as response:
                await response.read()
                return response.status, response.headers.get("X-Event-Id", "")
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0.05)
        except (TimeoutError, aiohttp.ClientError):
            return 0, ""
    return 0, ""


async def declare(url: str, store: int, name: str, settings: ConsumerSettings) -> str:
    """The workers' queue, and a checker queue (quorum too) bound the same way."""
    checker = f"e2e.checker.{uuid.uuid4().hex}"
    connection = await aio_pika.connect(url)
    async with connection, connection.channel() as channel:
        await declare_topology(channel)
        await topology.declare(channel, name, settings)
        queue = await channel.declare_queue(
            checker, durable=True, arguments={"x-queue-type": "quorum"}
        )
        for binding in settings.bindings:
            await queue.bind(contract.EXCHANGE, binding)
    return checker


async def spool_empty(gateway: GatewayProcess) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{gateway.url}/readyz") as response,
        ):
            return int((await response.json())["spool"]["depth"]) == 0
    except aiohttp.ClientError:
        return False


async def published(url: str, queue: str) -> list[Event]:
    connection = await aio_pika.connect(url)
    async with connection, connection.channel() as channel:
        messages = await broker.drain(channel, queue, timeout_s=60)
    return [Event.from_body(m.body) for m in messages]


async def test_faults_at_every_stage_lose_nothing_and_apply_each_visit_once(
    private_node: Node, private_pg: pgnode.PgNode, tmp_path: Path, store: int
) -> None:
    scratch = Scratch(private_node.url, BASE)
    name, settings = scratch.consumer(f"entered.{store}", f"exited.{store}", f"tracking.{store}")
    checker = await declare(private_node.url, store, name, settings)
    env = child_environ() | {"AIFI_AMQP_URL": private_node.url, "AIFI_LEDGER_URL": private_pg.url}
    workers = Workers(tmp_path, name, settings, env)
    gateway = GatewayProcess(
        free_port(),
        gateway_env(private_node.url, tmp_path / "spool", AIFI_AMQP_RECONNECT_MAX_S="0.5"),
        tmp_path / "gateway.log",
    )
    try:
        gateway.start()
        for index in (workers.start(), workers.start()):
            await eventually(functools.partial(workers.consuming, index), 30, f"worker {index}")
        calls, answers = webhooks(store), Answers()
        stages = faults(gateway, private_node, workers, private_pg)
        for chunk, fault in zip(chunks(calls, len(stages)), stages, strict=True):
            # Each fault strikes a third of the way into a part of the load of its own.
            load = asyncio.create_task(post_all(gateway.url, chunk, answers))
            await answers.until(answers.count + len(chunk) // 3)
            assert not load.done(), "the load ended before the fault: it would prove nothing"
            await fault()
            await load
        await eventually(lambda: spool_empty(gateway), 60, "the gateway's spool to empty")
        events = await published(private_node.url, checker)
        arrived = {event.id for event in events}
        assert answers.accepted <= arrived, f"lost {len(answers.accepted - arrived)}"
        assert len(answers.accepted) >= len(calls) // 2, "the load hardly ran"
        ledger_settings = LedgerSettings(url=private_pg.url)
        total = len(reference.distinct(events))
        await eventually(
            lambda: processed_at_least(ledger_settings, total), SETTLE_S, "all applied"
        )
        assert await reference.differences(ledger_settings, events) == []
    finally:
        gateway.stop()
        workers.kill_all()


def faults(gateway: GatewayProcess, node: Node, workers: Workers, pg: pgnode.PgNode) -> list[Fault]:
    async def gateway_killed() -> None:
        gateway.kill()
        await asyncio.to_thread(gateway.start)

    async def broker_killed() -> None:
        await asyncio.to_thread(node.kill)
        await asyncio.to_thread(node.start, 120)

    async def worker_killed() -> None:
        workers.processes[0].kill()
        index = workers.start()
        await eventually(functools.partial(workers.consuming, index), 60, "a new worker")

    async def ledger_stopped() -> None:
        await asyncio.to_thread(pg.stop, "immediate")
        await eventually(functools.partial(waiting, workers, 1), 60, "a worker to wait")
        await asyncio.to_thread(pg.start)

    return [gateway_killed, broker_killed, worker_killed, ledger_stopped]
