"""The worker against a real broker: settlement, retries, dead letters, batching, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from consumers import health, testing, topology
from consumers.handler import Handlers, Reject, RetryLater
from consumers.ledger_handler import handlers
from consumers.runner import HandlerTimeout, Worker, applied_log
from core import contract
from core.amqp import declare_topology
from core.contract import (
    ATTEMPTS_HEADER,
    REASON_HEADER,
    Event,
    Outbound,
    dead_queue_name,
    delay_queue_name,
    queue_name,
)
from core.settings import AmqpSettings, ConsumerSettings, LedgerSettings
from devtools.rabbitnode import Node, free_port
from ledger.ledger import Ledger, opened as open_ledger
from tests.support import broker, ledger_schema as schema
from tests.support.consumer import Scratch, running
from tests.support.silent import SilentNode
from tests.support.waiting import eventually

BASE = ConsumerSettings(
    prefetch=16, max_attempts=3, retry_base_ms=50, retry_max_ms=100, linger_ms=1
)


@pytest.fixture
def consumer_base() -> ConsumerSettings:
    """The settings `scratch` makes this module's consumers from."""
    return BASE


class Recorder:
    """A handler that records every call and raises what its plan says, in turn."""

    def __init__(self, *plan: Exception, delay_s: float = 0.0) -> None:
        self.plan = list(plan)
        self.calls: list[tuple[str, float]] = []
        self.delay_s = delay_s

    async def __call__(self, event: Event) -> None:
        self.calls.append((event.id, time.monotonic()))
        await asyncio.sleep(self.delay_s)
        if self.plan:
            raise self.plan.pop(0)


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> LedgerSettings:
    return LedgerSettings(db=tmp_path / "ledger.sqlite3")


@pytest.fixture
async def ledger(sqlite_ledger: LedgerSettings) -> AsyncIterator[Ledger]:
    async with open_ledger(sqlite_ledger) as opened:
        yield opened


def worker(url: str, name: str, settings: ConsumerSettings, handler: Handlers) -> Worker:
    return Worker(name, settings, AmqpSettings(urls=(url,), reconnect_max_s=0.5), handler)


async def dead_letters(channel: AbstractChannel, name: str) -> list[AbstractIncomingMessage]:
    queue = await channel.get_queue(dead_queue_name(name))
    found = []
    while (message := await queue.get(fail=False)) is not None:
        await message.ack()
        found.append(message)
    return found


def without_session(outbound: Outbound) -> Outbound:
    """A well-formed event the ledger cannot use: an entry without a session."""
    event = orjson.loads(outbound.body)
    event["data"]["sessionId"] = None
    return Outbound(
        outbound.message_id,
        outbound.routing_key,
        orjson.dumps(event),
        outbound.content_type,
        outbound.timestamp_s,
        outbound.headers,
    )


async def test_twins_and_a_redelivery_through_the_broker(
    amqp_url: str,
    channel: AbstractChannel,
    scratch: Scratch,
    ledger: Ledger,
    sqlite_ledger: LedgerSettings,
    store: int,
) -> None:
    name, settings = scratch.consumer(f"entered.{store}", f"exited.{store}")
    entered = testing.transition("entered", store, "s1")
    twins = [testing.transition("exited", store, "s1") for _ in range(2)]
    consumer = worker(amqp_url, name, settings, handlers(ledger))
    async with running(consumer):
        await broker.publish(channel, [entered, entered, *twins])
        await eventually(lambda: consumer.state.acked == 4, what="4 acks")
    visit = await ledger.visit("s1")
    assert visit is not None
    assert (visit["personsEntered"], visit["personsExited"]) == (1, 2)
    assert await schema.processed(sqlite_ledger) == 3


@pytest.mark.parametrize(
    "turns",
    [
        [["entered"], ["exited"]],
        [["exited"], ["entered"]],
        [["entered", "exited"]],
    ],
    ids=["entry-first", "exits-first", "together"],
)
async def test_every_order_of_entry_and_exits_ends_the_same(
    amqp_url: str,
    channel: AbstractChannel,
    scratch: Scratch,
    ledger: Ledger,
    store: int,
    turns: list[list[str]],
) -> None:
    """Entries and exits travel on separate queues, so either may be processed first."""
    queues = {kind: scratch.consumer(f"{kind}.{store}") for kind in ("entered", "exited")}
    for name, settings in queues.values():
        await topology.declare(channel, name, settings)
    await broker.publish(
        channel,
        [
            testing.transition("exited", store, "s1", timeOfOrigin="2024-05-01T12:30:00Z"),
            testing.transition("exited", store, "s1", timeOfOrigin="2024-05-01T12:30:00.5Z"),
            testing.transition("entered", store, "s1", timeOfOrigin="2024-05-01T12:00:00Z"),
        ],
    )
    expected_acks = {"entered": 1, "exited": 2}
    for turn in turns:
        await run_until_acked(
            {kind: worker(amqp_url, *queues[kind], handlers(ledger)) for kind in turn},
            expected_acks,
        )
    assert await ledger.visit("s1") == {
        "sessionId": "s1",
        "storeId": store,
        "oasisApiStoreId": store,
        "aifiUniqueStoreId": f"s-{store}",
        "storeExternalId": f"ext-{store}",
        "customerId": "c-s1",
        "customerRole": "customer",
        "shopperId": "p-s1",
        "groupSize": 1,
        "firstEntered": "2024-05-01T12:00:00.000000Z",
        "lastExited": "2024-05-01T12:30:00.500000Z",
        "personsEntered": 1,
        "personsExited": 2,
        "occupancy": 0,
    }


async def run_until_acked(workers: dict[str, Worker], acks: dict[str, int]) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for each in workers.values():
            await stack.enter_async_context(running(each))
        await eventually(
            lambda: all(w.state.acked == acks[k] for k, w in workers.items()),
            what=f"{sorted(workers)} to be processed",
        )


async def test_a_poison_message_is_dead_lettered_after_max_attempts_with_its_reason(
    amqp_url: str, channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    handler = Recorder(*(RetryLater("downstream is down") for _ in range(5)))
    consumer = worker(amqp_url, name, settings, Handlers(one=handler))
    event = testing.transition("entered", store, "s1")
    async with running(consumer):
        await broker.publish(channel, [event])
        await eventually(lambda: consumer.state.dead_lettered == 1, what="dead letter")
    [dead] = await dead_letters(channel, name)
    assert dead.body == event.body
    assert dead.message_id == event.message_id
    assert dead.headers[ATTEMPTS_HEADER] == 3
    assert dead.headers[REASON_HEADER] == "RetryLater: downstream is down"
    assert [call[0] for call in handler.calls] == [event.message_id] * 3
    # Backoff, not a hot loop: 50 ms, then 100 ms.
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(handler.calls)]
    assert gaps[0] >= 0.05
    assert gaps[1] >= 0.1
    assert (consumer.state.retried, consumer.state.acked) == (2, 0)


async def test_it_counts_what_waits_in_its_queues_and_in_aifi_unrouted(
    amqp_url: str, channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    consumer = worker(amqp_url, name, settings, Handlers(one=Recorder()))
    consumer.count_interval_s = 0.05
    dead, unrouted = dead_queue_name(name), contract.UNROUTED_QUEUE
    async with running(consumer):
        await eventually(lambda: {queue_name(name), dead, unrouted} <= set(consumer.state.queued))
        before = consumer.state.queued[unrouted]
        for body in (b"a", b"b"):
            await channel.default_exchange.publish(aio_pika.Message(body), dead)
        # No binding matches: the alternate exchange keeps it in aifi.unrouted.
        nowhere = testing.transition("entered", store, "s1")
        await broker.publish(channel, [dataclasses.replace(nowhere, routing_key=f"no.{store}")])
        await eventually(lambda: consumer.state.queued[dead] == 2, what="2 dead letters")
        await eventually(lambda: consumer.state.queued[unrouted] > before, what="1 unrouted")
        assert consumer.state.queued[queue_name(name)] == 0
    assert len(await dead_letters(channel, name)) == 2


async def test_a_transient_failure_succeeds_on_retry(
    amqp_url: str, channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    handler = Recorder(RetryLater("busy"), RuntimeError("a bug that went away"))
    consumer = worker(amqp_url, name, settings, Handlers(one=handler))
    async with running(consumer):
        await broker.publish(channel, [testing.transition("entered", store, "s1")])
        await eventually(lambda: consumer.state.acked == 1, what="the ack")
    assert len(handler.calls) == 3
    assert (consumer.state.retried, consumer.state.dead_lettered) == (2, 0)
    assert await dead_letters(channel, name) == []
    assert await broker.depth(channel, queue_name(name)) == 0


async def test_reject_and_invalid_bodies_are_dead_lettered_at_once(
    amqp_url: str, channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    handler = Recorder(Reject("unknown store"))
    consumer = worker(amqp_url, name, settings, Handlers(one=handler))
    exchange = await channel.get_exchange(contract.EXCHANGE)
    async with running(consumer):
        junk = aio_pika.Message(b"{not json", message_id="junk")
        await exchange.publish(junk, f"entered.{store}")
        await broker.publish(channel, [testing.transition("entered", store, "s1")])
        await eventually(lambda: consumer.state.dead_lettered == 2, what="dead letters")
    reasons = {
        m.message_id: (m.headers[ATTEMPTS_HEADER], str(m.headers[REASON_HEADER]))
        for m in await dead_letters(channel, name)
    }
    assert reasons.pop("junk")[1].startswith("Reject: not a valid event")
    assert list(reasons.values()) == [(1, "Reject: unknown store")]
    assert len(handler.calls) == 1
    assert consumer.state.retried == 0


async def test_one_poison_event_does_not_hold_back_its_batch(
    amqp_url: str,
    channel: AbstractChannel,
    scratch: Scratch,
    ledger: Ledger,
    sqlite_ledger: LedgerSettings,
    store: int,
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    await topology.declare(channel, name, settings)
    good = [testing.transition("entered", store, f"s{i}") for i in range(10)]
    poison = without_session(testing.transition("entered", store, "s-poison"))
    await broker.publish(channel, [*good[:5], poison, *good[5:]])
    consumer = worker(amqp_url, name, settings, handlers(ledger))
    async with running(consumer):
        await eventually(lambda: consumer.state.acked + consumer.state.dead_lettered == 11)
    assert consumer.state.batches < 11  # the events did arrive together
    assert (consumer.state.acked, consumer.state.dead_lettered) == (10, 1)
    assert await schema.processed(sqlite_ledger) == 10
    [dead] = await dead_letters(channel, name)
    assert dead.message_id == poison.message_id
    assert "no sessionId" in str(dead.headers[REASON_HEADER])


async def test_a_copy_the_broker_cannot_route_is_requeued_until_the_delivery_limit(
    amqp_url: str, channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    """Nothing is dropped: with no delay queue to take the retry, the original goes back
    (reject, counted by the delivery limit), and the broker dead-letters it at the limit."""
    name, settings = scratch.consumer(f"entered.{store}", delivery_limit=2)
    handler = Recorder(*(RetryLater("still down") for _ in range(10)))
    consumer = worker(amqp_url, name, settings, Handlers(one=handler))
    async with running(consumer):
        await channel.queue_delete(delay_queue_name(name, 50), if_unused=False, if_empty=False)
        await broker.publish(channel, [testing.transition("entered", store, "s1")])
        await eventually(lambda: dead_letters_waiting(channel, name), what="dead letter")
    assert consumer.state.requeued == 3  # delivered, then redelivered twice: the limit is 2
    assert len(handler.calls) == 3
    [dead] = await dead_letters(channel, name)
    assert dead.headers["x-first-death-reason"] == "delivery_limit"
    assert ATTEMPTS_HEADER not in dead.headers


async def dead_letters_waiting(channel: AbstractChannel, name: str) -> bool:
    return await broker.depth(channel, dead_queue_name(name)) > 0


async def test_stopping_settles_every_delivery_in_hand(
    amqp_url: str, channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}")
    await topology.declare(channel, name, settings)
    await broker.publish(
        channel, [testing.transition("entered", store, f"s{i}") for i in range(50)]
    )
    handler = Recorder(delay_s=0.2)
    consumer = worker(amqp_url, name, settings, Handlers(one=handler))
    async with running(consumer):
        await eventually(lambda: len(handler.calls) > 0, what="the first call")
    # Stopped while 16 handlers were running: each finished and was acked, none came back.
    assert consumer.state.acked == len(handler.calls) == settings.prefetch
    assert await broker.depth(channel, queue_name(name)) == 50 - settings.prefetch
    rest = await channel.get_queue(queue_name(name))
    redelivered = []
    while (message := await rest.get(fail=False)) is not None:
        redelivered.append(message.redelivered)
        await message.ack()
    assert redelivered == [False] * (50 - settings.prefetch)


async def test_a_lost_connection_ends_the_batch_in_hand_before_the_worker_says_so(
    private_node: Node, store: int
) -> None:
    calls: list[str] = []
    ended: list[str] = []

    async def handler(event: Event) -> None:
        calls.append(event.id)
        if len(calls) > 1:
            return  # the redelivery after the reconnect
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.5)  # still settling as its connection is gone
            ended.append(event.id)

    name = f"t{uuid.uuid4().hex[:16]}"
    settings = BASE.model_copy(update={"bindings": (f"entered.{store}",)})
    consumer = worker(private_node.url, name, settings, Handlers(one=handler))
    async with running(consumer):
        await publish_to(private_node.url, [testing.transition("entered", store, "s0")])
        await eventually(lambda: len(calls) == 1, what="the handler's call")
        await asyncio.to_thread(private_node.close_all_connections, "test")
        await eventually(lambda: not consumer.state.connected, what="the loss")
        assert ended == calls[:1], "the worker went on while its batch was still settling"
        await eventually(lambda: len(calls) == 2, what="the redelivery")


async def publish_to(url: str, outbounds: list[Outbound]) -> None:
    connection = await aio_pika.connect(url)
    async with connection, connection.channel() as channel:
        await declare_topology(channel)
        await broker.publish(channel, outbounds)


async def healthz(port: int) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status, await response.json()


async def test_consuming_resumes_after_the_broker_is_killed_and_restarted(
    private_node: Node, ledger: Ledger, sqlite_ledger: LedgerSettings, store: int
) -> None:
    name, port = f"t{uuid.uuid4().hex[:16]}", free_port()
    settings = BASE.model_copy(update={"bindings": (f"entered.{store}",), "prefetch": 32})
    resume = asyncio.Event()
    consumer = worker(private_node.url, name, settings, paused_after(handlers(ledger), 200, resume))
    before = [testing.transition("entered", store, f"a{i}") for i in range(3000)]
    after = [testing.transition("entered", store, f"b{i}") for i in range(1000)]
    async with health.serving(consumer.state, "127.0.0.1", port), running(consumer):
        await publish_to(private_node.url, before)
        await eventually(lambda: processed_at_least(sqlite_ledger, 200), what="progress")
        await asyncio.to_thread(private_node.kill)
        assert await schema.processed(sqlite_ledger) < len(before)  # killed mid-stream
        resume.set()
        await eventually(lambda: not consumer.state.connected, what="the loss")
        assert (await healthz(port))[0] == 503
        await asyncio.to_thread(private_node.start)
        await publish_to(private_node.url, after)
        await eventually(
            lambda: processed_at_least(sqlite_ledger, len(before) + len(after)), 30, "every event"
        )
        status, body = await healthz(port)
    assert (status, body["consuming"], body["connected"]) == (200, True, True)
    assert body["reconnects"] >= 1
    assert body["redelivered"] > 0  # what was in hand at the crash came back...
    assert await schema.processed(sqlite_ledger) == len(before) + len(after)
    [stats] = await ledger.occupancy(store)
    assert stats["occupancy"] == len(before) + len(after)  # ...and counted once


def paused_after(handler: Handlers, count: int, resume: asyncio.Event) -> Handlers:
    """The ledger behind a downstream that stops once `count` events are applied, until
    `resume` is set: the broker is crashed in the middle of the stream, however fast the
    worker runs."""
    assert handler.many is not None
    apply_many = handler.many
    applied = [0]

    async def many(events: Sequence[Event]) -> None:
        if applied[0] >= count:
            await resume.wait()
        await apply_many(events)
        applied[0] += len(events)

    return Handlers(one=handler.one, many=many)


async def processed_at_least(settings: LedgerSettings, count: int) -> bool:
    return await schema.processed(settings) >= count


async def test_a_handler_that_runs_too_long_is_retried_then_dead_lettered(
    amqp_url: str, channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    name, settings = scratch.consumer(f"entered.{store}", handler_timeout_s=0.2)
    handler = Recorder(delay_s=30)  # far beyond its timeout, every time
    consumer = worker(amqp_url, name, settings, Handlers(one=handler))
    async with running(consumer):
        await broker.publish(channel, [testing.transition("entered", store, "s1")])
        await eventually(lambda: consumer.state.dead_lettered == 1, what="dead letter")
    [dead] = await dead_letters(channel, name)
    assert dead.headers[ATTEMPTS_HEADER] == settings.max_attempts == 3
    assert str(dead.headers[REASON_HEADER]).startswith(HandlerTimeout.__name__)
    assert len(handler.calls) == 3
    assert (consumer.state.retried, consumer.state.acked) == (2, 0)


class Stall:
    """A TCP port that accepts connections and says nothing until released: a broker URL
    that keeps a worker trying to connect for as long as a test needs."""

    def __init__(self) -> None:
        self.connections = 0
        self.released = asyncio.Event()

    async def _hold(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await self.released.wait()
        writer.close()
        await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"amqp://guest:guest@127.0.0.1:{port}/"
        finally:
            self.released.set()
            server.close()
            await server.wait_closed()


async def test_a_queue_deleted_under_a_worker_is_declared_again_and_consumed(
    amqp_url: str, channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    """The broker cancels the consumer of a deleted queue and keeps the channel open: the
    worker must notice, report it, and consume again rather than wait forever."""
    name, settings = scratch.consumer(f"entered.{store}")
    handler, stall, port = Recorder(), Stall(), free_port()
    first, second = (testing.transition("entered", store, s) for s in ("s1", "s2"))
    async with stall.serving() as stalled_url:
        # After the cancel the worker moves on to the next URL, which holds it while the
        # test looks at /healthz.
        amqp = AmqpSettings(urls=(amqp_url, stalled_url), reconnect_max_s=0.5)
        consumer = Worker(name, settings, amqp, Handlers(one=handler))
        async with health.serving(consumer.state, "127.0.0.1", port), running(consumer):
            await broker.publish(channel, [first])
            await eventually(lambda: consumer.state.acked == 1, what="the first ack")
            await channel.queue_delete(queue_name(name), if_unused=False, if_empty=False)
            await eventually(lambda: stall.connections > 0, what="the worker to move on")
            status, body = await healthz(port)
            assert (status, body["consuming"]) == (503, False)
            assert str(body["last_error"]).startswith("ConsumerCancelled")
            assert body["cancels"] == 1
            stall.released.set()
            await eventually(lambda: consumer.state.consuming, what="consuming again")
            await broker.publish(channel, [second])  # routed: the queue is back, bound
            await eventually(lambda: consumer.state.acked == 2, what="the second ack")
            status, body = await healthz(port)
    assert (status, body["consuming"]) == (200, True)
    assert [call[0] for call in handler.calls] == [first.message_id, second.message_id]
    assert consumer.state.reconnects >= 1


async def test_a_node_holding_declarations_is_left_for_the_next_url(
    amqp_url: str, channel: AbstractChannel, scratch: Scratch, store: int
) -> None:
    """A minority node of a 4.2+ cluster holds declarations ~30 s: bounded by
    `amqp.declare_timeout_s`, the worker moves on to the next URL and consumes there."""
    name, settings = scratch.consumer(f"entered.{store}")
    handler, silent = Recorder(), SilentNode()
    event = testing.transition("entered", store, "s1")
    async with silent.serving() as silent_url:
        # A publish bound far beyond the wait: only the declaration bound can free it.
        urls = (silent_url, amqp_url)
        amqp = AmqpSettings(urls=urls, declare_timeout_s=0.5, publish_timeout_s=120)
        consumer = Worker(name, settings, amqp, Handlers(one=handler))
        async with running(consumer):
            await eventually(lambda: consumer.state.consuming, 15, "consuming on the next URL")
            await broker.publish(channel, [event])
            await eventually(lambda: consumer.state.acked == 1, what="the event acked")
    assert silent.declarations == 1, "the silent node was tried first and held a declaration"
    assert [call[0] for call in handler.calls] == [event.message_id]


def test_an_applied_event_is_logged_with_its_trace_id(caplog: pytest.LogCaptureFixture) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    traced = Event("e-1", "t", "s", None, None, {"kind": "entered"}, traceparent=traceparent)
    untraced = Event("e-2", "t", "s", None, None, {"kind": "entered"})
    with caplog.at_level(logging.DEBUG, logger="consumers.runner"):
        applied_log("c", [traced, untraced])
    ids = [(vars(r)["event_id"], vars(r)["trace_id"]) for r in caplog.records]
    assert ids == [("e-1", "4bf92f3577b34da6a3ce929d0e0e4736"), ("e-2", None)]
