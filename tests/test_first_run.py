"""A new user's first webhooks: what the gateway accepts before any worker ever ran, or after
the broker lost its data, waits in its consumer's queue, never in `aifi.unrouted`; what no
consumer wants still lands there; an earlier release's queue does not stop the gateway.

The gateways here declare consumers of the test's own (unique names, bound to the test's
store), on a private node that one test wipes."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import aiormq
import pytest
import yaml

from consumers.replay import replay_unrouted
from core import contract
from core.settings import AmqpSettings, ConsumerSettings
from core.topology import all_specs
from devtools.rabbitnode import Node, free_port
from devtools.stack import BIN, CONSUMER_COMMAND
from tests.support import broker
from tests.support.gateway import AUTH, Client, gateway_env, gateway_settings, started_client
from tests.support.ledger_schema import sqlite_processed
from tests.support.processes import GatewayProcess, child_environ, kill_group
from tests.support.waiting import eventually

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Each example, where the gateway's default paths take it, and the kind it becomes.
POSTS = {"entered": "/webhooks/aifi/entered", "left": "/webhooks/aifi/left"}
POSTS["tracking"] = "/webhooks/aifi/tracking"
KINDS = {"entered": "entered", "left": "exited", "tracking": "tracking"}


@pytest.fixture(scope="module")
def private_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A broker of this module's own: one test wipes it, which the session's must never be."""
    with broker.started_node(tmp_path_factory.mktemp("rabbit")) as node:
        yield node


def consumers_of(store: int) -> dict[str, ConsumerSettings]:
    """A consumer per kind, with names no one else uses, each bound to this store only."""
    run = uuid.uuid4().hex[:8]
    return {
        f"t{run}-{kind}": ConsumerSettings(bindings=(contract.routing_key(kind, store),))
        for kind in KINDS.values()
    }


def example(name: str, store: int) -> bytes:
    body = json.loads((EXAMPLES / f"{name}.json").read_bytes())
    body["storeId"] = store
    return json.dumps(body).encode()


async def post_examples(url: str, store: int) -> None:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        for name in POSTS:
            async with session.post(url + POSTS[name], data=example(name, store)) as answer:
                assert answer.status == 200, await answer.text()


async def ready(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as answer:
            return answer.status == 200
    except aiohttp.ClientError:
        return False


async def confirmed(url: str) -> int:
    """How many publishes the gateway at `url` has had confirmed."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as answer:
        return int((await answer.json())["confirms"])


async def depths(amqp_url: str, queues: list[str]) -> dict[str, int | None]:
    """Messages ready in each queue; None for a queue that does not exist."""
    found: dict[str, int | None] = {}
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for queue in queues:
            # A channel each: the broker closes the one that asked for a missing queue.
            try:
                async with connection.channel() as channel:
                    found[queue] = await broker.depth(channel, queue)
            except aiormq.exceptions.ChannelNotFoundEntity:
                found[queue] = None
    return found


async def ours_unrouted(amqp_url: str, store: int) -> list[str]:
    """The routing keys of this store's events in `aifi.unrouted`, taken out of it."""
    connection = await aio_pika.connect(amqp_url)
    async with connection, connection.channel() as channel:
        taken = await broker.drain(channel, contract.UNROUTED_QUEUE)
    suffix = f".{store}"
    return [m.routing_key or "" for m in taken if (m.routing_key or "").endswith(suffix)]


class Stack:
    """A gateway process and, later, the workers of `consumers`, all on `amqp_url`."""

    def __init__(self, tmp_path: Path, amqp_url: str, consumers: dict[str, ConsumerSettings]):
        self.config = tmp_path / "config.yaml"
        dumped = {name: each.model_dump(mode="json") for name, each in consumers.items()}
        self.config.write_text(yaml.safe_dump({"consumers": dumped}))
        self.db = tmp_path / "ledger.sqlite3"
        self.tmp_path, self.amqp_url, self.consumers = tmp_path, amqp_url, consumers
        env = gateway_env(amqp_url, tmp_path / "spool", AIFI_CONFIG=str(self.config))
        env |= {"AIFI_LOG_LEVEL": "INFO", "AIFI_AMQP_RECONNECT_MAX_S": "0.5"}
        self.gateway = GatewayProcess(free_port(), env, tmp_path / "gateway.log")
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_workers(self) -> None:
        env = child_environ() | {
            "AIFI_AMQP_URL": self.amqp_url,
            "AIFI_CONFIG": str(self.config),
            "AIFI_LEDGER_DB": str(self.db),
        }
        for name in self.consumers:
            with (self.tmp_path / f"{name}.log").open("wb") as log:
                command = [str(BIN / CONSUMER_COMMAND[0]), *CONSUMER_COMMAND[1:], name]
                self.workers.append(
                    subprocess.Popen(command, env=env, stdout=log, stderr=log, process_group=0)
                )

    def processed(self) -> int:
        return sqlite_processed(self.db)

    def gateway_log(self) -> list[dict[str, Any]]:
        lines = self.gateway.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self) -> None:
        for worker in self.workers:
            kill_group(worker.pid)
            worker.wait(10)
        self.gateway.stop()


@pytest.fixture
def stack(tmp_path: Path, private_node: Node, store: int) -> Iterator[Stack]:
    made = Stack(tmp_path, private_node.url, consumers_of(store))
    try:
        yield made
    finally:
        made.stop()


async def started(stack: Stack) -> None:
    """The gateway up and ready; nothing waits once it is."""
    await asyncio.to_thread(stack.gateway.start)
    await eventually(lambda: ready(stack.gateway.url), 30, "the gateway to be ready")


def main_queues(stack: Stack) -> list[str]:
    return [contract.queue_name(name) for name in stack.consumers]


async def test_webhooks_accepted_before_any_worker_ever_ran_reach_the_ledger(
    stack: Stack, store: int
) -> None:
    await started(stack)
    await post_examples(stack.gateway.url, store)  # within the first second of being ready
    await eventually(lambda: _confirmed(stack, 3), 10, "the three examples confirmed")
    assert await ours_unrouted(stack.amqp_url, store) == []
    assert await depths(stack.amqp_url, main_queues(stack)) == dict.fromkeys(main_queues(stack), 1)
    stack.start_workers()  # as the workers of a stack starting after the gateway would
    await eventually(lambda: stack.processed() == 3, 60, "the three examples in the ledger")
    declared = [line for line in stack.gateway_log() if line["message"] == "amqp topology declared"]
    assert declared
    assert declared[0]["queues"] == len(all_specs(stack.consumers))


async def _confirmed(stack: Stack, count: int) -> bool:
    return await confirmed(stack.gateway.url) >= count


def wipe(node: Node) -> None:
    """What a lost broker volume does: the node starts again with no queue, no exchange."""
    node.stop()
    shutil.rmtree(node.spec.base_dir.resolve() / node.spec.name / "mnesia")
    node.start(120)


async def test_webhooks_after_the_broker_lost_its_data_reach_the_queues(
    stack: Stack, private_node: Node, store: int
) -> None:
    await started(stack)
    await asyncio.to_thread(wipe, private_node)
    # Gone with the data, until the gateway declares them again.
    await eventually(lambda: ready(stack.gateway.url), 30, "the gateway to reconnect")
    await post_examples(stack.gateway.url, store)
    await eventually(lambda: _confirmed(stack, 3), 10, "the three examples confirmed")
    assert await ours_unrouted(stack.amqp_url, store) == []
    assert await depths(stack.amqp_url, main_queues(stack)) == dict.fromkeys(main_queues(stack), 1)
    declared = [line for line in stack.gateway_log() if line["message"] == "amqp topology declared"]
    assert len(declared) >= 2, "declared at the first connection and again after the wipe"


async def test_a_queue_an_earlier_release_declared_otherwise_is_bound_and_the_gateway_goes_on(
    private_node: Node, tmp_path: Path, store: int, caplog: pytest.LogCaptureFixture
) -> None:
    consumers = consumers_of(store)
    earlier = contract.queue_name(next(iter(consumers)))
    connection = await aio_pika.connect(private_node.url)
    async with connection, connection.channel() as channel:
        # As a release before dead-lettering would have left it: quorum, no other argument.
        await channel.declare_queue(earlier, durable=True, arguments={"x-queue-type": "quorum"})
    settings = gateway_settings(private_node.url, tmp_path, consumers=consumers)
    with caplog.at_level(logging.WARNING, "gateway.publisher"):
        async for client in started_client(settings):
            assert (await client.get("/readyz")).status == 200
            for name in POSTS:
                answer = await client.post(POSTS[name], data=example(name, store), headers=AUTH)
                assert answer.status == 200
            await eventually(functools.partial(_client_confirmed, client, 3), 10, "3 confirmed")
    warned = [r for r in caplog.records if getattr(r, "queue", None) == earlier]
    assert warned
    assert "aifi-consumer migrate" in warned[0].getMessage()
    assert await ours_unrouted(private_node.url, store) == []
    queues = [contract.queue_name(name) for name in consumers]
    assert await depths(private_node.url, queues) == dict.fromkeys(queues, 1)


async def _client_confirmed(client: Client, count: int) -> bool:
    answer = await client.get("/readyz")
    return int((await answer.json())["confirms"]) >= count


async def test_an_event_no_consumer_binds_still_lands_in_unrouted(
    private_node: Node, tmp_path: Path, store: int
) -> None:
    wanted = {k: v for k, v in consumers_of(store).items() if not k.endswith("-tracking")}
    settings = gateway_settings(private_node.url, tmp_path, consumers=wanted)
    async for client in started_client(settings):
        answer = await client.post(POSTS["tracking"], data=example("tracking", store), headers=AUTH)
        assert answer.status == 200
        await eventually(functools.partial(_client_confirmed, client, 1), 10, "1 confirmed")
    assert await ours_unrouted(private_node.url, store) == [contract.routing_key("tracking", store)]
    queues = [contract.queue_name(name) for name in wanted]
    assert await depths(private_node.url, queues) == dict.fromkeys(queues, 0)


async def test_events_an_earlier_release_left_in_unrouted_are_routed_anew(
    private_node: Node, tmp_path: Path, store: int
) -> None:
    # As before the gateway declared the consumers' queues: all three land in aifi.unrouted.
    async for client in started_client(gateway_settings(private_node.url, tmp_path)):
        for name in POSTS:
            answer = await client.post(POSTS[name], data=example(name, store), headers=AUTH)
            assert answer.status == 200
        await eventually(functools.partial(_client_confirmed, client, 3), 10, "3 confirmed")
    wanted = {k: v for k, v in consumers_of(store).items() if not k.endswith("-tracking")}
    amqp = AmqpSettings(urls=(private_node.url,))
    assert await replay_unrouted(amqp, wanted) >= 3
    queues = [contract.queue_name(name) for name in wanted]
    assert await depths(private_node.url, queues) == dict.fromkeys(queues, 1)
    # Wanted by no one still: back where it was, not dropped.
    assert await ours_unrouted(private_node.url, store) == [contract.routing_key("tracking", store)]
