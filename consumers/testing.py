"""Helpers for testing a consumer against a real broker (ours, and a downstream team's).

Events are built from the contract's own definition (`core.contract`) and encoded as the
gateway encodes them: valid envelopes of each kind, not a copy of the gateway's normalization.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from consumers import topology
from consumers.runner import Worker
from core import contract
from core.contract import (
    DATA_CONTENT_TYPE,
    EVENT_TYPES,
    EXCHANGE,
    SPECVERSION,
    Context,
    Kind,
    Normalized,
    Outbound,
    tracking_event_id,
)
from core.settings import ConsumerSettings
from core.times import iso

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


def transition(
    kind: Literal["entered", "exited"], store_id: int, session_id: str, **fields: Any
) -> Outbound:
    """An event of one "entered" or "left" call; `fields` override the call's top-level fields
    (`timeOfOrigin`, `shopperId`, ...), and the event's fields of the same name."""
    raw = transition_body(store_id, session_id, **fields)
    common = _common(kind, store_id, raw, fields)
    data = Normalized.model_construct(
        **common,
        storeExternalId=f"ext-{store_id}",
        sessionId=session_id,
        customerId=f"c-{session_id}",
        customerRole="customer",
        shopperId=fields.get("shopperId", f"p-{session_id}"),
        groupSize=1,
        uniqueEventId=None,
    )
    return _outbound(str(uuid.uuid4()), session_id, data, raw)


def tracking(store_id: int, unique_event_id: str, shopper_id: str | None) -> Outbound:
    """An event of one tracking call (its id, as the gateway's, follows from its ids)."""
    body = {
        "storeId": store_id,
        "store": {"oasisApiStoreId": store_id, "aifiUniqueStoreId": f"s-{store_id}"},
        "timeOfOrigin": ORIGIN.isoformat(),
        "timeOfIssue": ORIGIN.isoformat(),
        "shopperId": shopper_id,
        "uniqueEventId": unique_event_id,
    }
    raw = orjson.dumps(body)
    data = Normalized.model_construct(
        **_common("tracking", store_id, raw, {}),
        storeExternalId=None,
        sessionId=None,
        customerId=None,
        customerRole=None,
        shopperId=shopper_id,
        groupSize=None,
        uniqueEventId=unique_event_id,
    )
    return _outbound(tracking_event_id(store_id, unique_event_id), unique_event_id, data, raw)


def _common(kind: Kind, store_id: int, raw: bytes, fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": kind,
        "storeId": store_id,
        "oasisApiStoreId": store_id,
        "aifiUniqueStoreId": f"s-{store_id}",
        "timeOfOrigin": fields.get("timeOfOrigin", iso(ORIGIN)),
        "timeOfIssue": fields.get("timeOfIssue", iso(ORIGIN)),
        "receivedAt": iso(datetime.now(UTC)),
        "tokenName": "test",
        "fingerprint": hashlib.sha256(raw).hexdigest(),
    }


def _outbound(event_id: str, subject: str, data: Normalized, raw: bytes) -> Outbound:
    context = Context.model_construct(
        specversion=SPECVERSION,
        id=event_id,
        source=f"/aifi/stores/{data.storeId}",
        type=EVENT_TYPES[data.kind],
        time=data.timeOfOrigin,
        subject=subject,
        datacontenttype=DATA_CONTENT_TYPE,
    )
    return contract.outbound(context, data, raw, int(time.time()), {})


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
