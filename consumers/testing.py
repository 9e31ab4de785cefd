"""Helpers for testing a consumer against a real broker (ours, and a downstream team's).

Events are made by the gateway's own normalization, so a test sees exactly what the
gateway would publish for the same AiFi call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from consumers import topology
from consumers.runner import Worker
from core.contract import EXCHANGE, Outbound
from core.settings import ConsumerSettings
from gateway import events
from gateway.events import Receipt
from gateway.models import Tracking, Transition

ORIGIN: Final = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PUBLISH_CHUNK: Final = 1000


def transition_body(store_id: int, session_id: str, **fields: Any) -> bytes:
    """A minimal AiFi "entered"/"left" body; `fields` override or add top-level fields."""
    body = {
        "sessionId": session_id,
        "session": {"sessionId": session_id, "groupSize": 1},
        "customer": {"id": f"c-{session_id}", "role": "customer"},
        "storeId": store_id,
        "store": {"oasisApiStoreId": store_id, "aifiUniqueStoreId": f"s-{store_id}"},
        "storeExternalId": f"ext-{store_id}",
        "timeOfOrigin": ORIGIN.isoformat(),
        "timeOfIssue": ORIGIN.isoformat(),
        "payment": {"paymentProvider": "NONE"},
        "shopperId": f"p-{session_id}",
        "shopper": {"shopperId": f"p-{session_id}"},
    }
    return orjson.dumps(body | fields)


def receipt(raw: bytes) -> Receipt:
    return Receipt(raw_body=raw, token_name="test", received_at=datetime.now(UTC))


def transition(
    kind: Literal["entered", "exited"], store_id: int, session_id: str, **fields: Any
) -> Outbound:
    """What the gateway publishes for one "entered" or "left" call."""
    raw = transition_body(store_id, session_id, **fields)
    model, got = Transition.model_validate_json(raw), receipt(raw)
    return events.to_outbound(events.from_transition(model, kind, got), got.received_at)


def tracking(store_id: int, unique_event_id: str, shopper_id: str | None) -> Outbound:
    """What the gateway publishes for one tracking call."""
    raw = orjson.dumps(
        {
            "storeId": store_id,
            "store": {"oasisApiStoreId": store_id, "aifiUniqueStoreId": f"s-{store_id}"},
            "timeOfOrigin": ORIGIN.isoformat(),
            "timeOfIssue": ORIGIN.isoformat(),
            "shopperId": shopper_id,
            "uniqueEventId": unique_event_id,
        }
    )
    model, got = Tracking.model_validate_json(raw), receipt(raw)
    return events.to_outbound(events.from_tracking(model, got), got.received_at)


def message(outbound: Outbound) -> aio_pika.Message:
    """The AMQP message the gateway sends for `outbound`."""
    return aio_pika.Message(
        outbound.body,
        message_id=outbound.message_id,
        content_type=outbound.content_type,
        timestamp=datetime.fromtimestamp(outbound.timestamp_s, UTC),
        headers=dict(outbound.headers),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


async def publish(channel: AbstractChannel, outbounds: Iterable[Outbound]) -> None:
    """Publish to the events exchange, confirmed, pipelined a chunk at a time."""
    exchange = await channel.get_exchange(EXCHANGE)
    for chunk in _chunks(outbounds):
        await asyncio.gather(*(exchange.publish(message(o), o.routing_key) for o in chunk))


def _chunks(outbounds: Iterable[Outbound]) -> Iterable[list[Outbound]]:
    iterator = iter(outbounds)
    while chunk := list(itertools.islice(iterator, PUBLISH_CHUNK)):
        yield chunk


async def depth(channel: AbstractChannel, queue: str) -> int:
    """Messages ready in `queue` (not counting those delivered and not yet settled)."""
    declared = await channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count or 0


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0, what: str = "it"
) -> None:
    """Poll `predicate` (plain or async) until it holds; fail naming `what` after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await _holds(predicate):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def _holds(predicate: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = predicate()
    return await result if inspect.isawaitable(result) else result


@contextlib.asynccontextmanager
async def running(worker: Worker, timeout_s: float = 10.0) -> AsyncIterator[asyncio.Task[None]]:
    """`worker` consuming in the background for the block, then stopped gracefully."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    def consuming() -> bool:
        if task.done():
            task.result()
        return worker.state.consuming

    try:
        await eventually(consuming, timeout_s, f"{worker.name} to consume")
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout_s)


class Scratch:
    """Consumers with names no one else uses, made for one test; `delete` removes their queues."""

    def __init__(self, url: str, base: ConsumerSettings) -> None:
        self.url = url
        self._base = base
        self._made: list[tuple[str, ConsumerSettings]] = []

    def consumer(self, *bindings: str, **overrides: Any) -> tuple[str, ConsumerSettings]:
        name = f"t{uuid.uuid4().hex[:16]}"
        settings = ConsumerSettings.model_validate(
            self._base.model_dump() | overrides | {"bindings": bindings}
        )
        self._made.append((name, settings))
        return name, settings

    async def delete(self) -> None:
        connection = await aio_pika.connect(self.url)
        async with connection, connection.channel() as channel:
            for name, settings in self._made:
                await topology.delete(channel, name, settings)


async def drain(
    channel: AbstractChannel, queue: str, timeout_s: float = 10.0
) -> list[AbstractIncomingMessage]:
    """Every message ready in `queue` now, acked, in order (a consumer: faster than gets)."""
    expected = await depth(channel, queue)
    taken: list[AbstractIncomingMessage] = []
    source = await channel.get_queue(queue)
    tag = await source.consume(functools.partial(_keep, taken))
    try:
        await eventually(lambda: len(taken) >= expected, timeout_s, f"{expected} from {queue}")
    finally:
        await source.cancel(tag)
    return taken


async def _keep(taken: list[AbstractIncomingMessage], message: AbstractIncomingMessage) -> None:
    await message.ack()
    taken.append(message)
