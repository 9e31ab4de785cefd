"""Give existing queues the arguments this release declares, without losing a message.

A queue's arguments cannot change in place (the broker refuses an inequivalent declare),
so each queue that differs is moved through a holding queue `<queue>.migrating`:

1. declare the holding queue with the queue's bindings, then unbind the queue, so that
   what is published meanwhile lands there (bound first: never a gap);
2. move every message into it, each acked only once its copy is confirmed;
3. delete the queue, declare it again with the new arguments and its bindings;
4. unbind the holding queue, move everything back the same way, delete it.

Each step starts from what exists, so a run that was interrupted is finished by running
the command again. The workers of a queue must be stopped first: a message they hold
unacked would go with the old queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from consumers.settlement import ACK_GRACE_S, copy
from core import topology
from core.amqp import KEEP_DELIVERY_LIMIT, connect_first, declare_unrouted_exchange
from core.settings import AmqpSettings, ConsumerSettings
from core.topology import QueueSpec

log = logging.getLogger(__name__)

HOLDING_SUFFIX: Final = ".migrating"
# A plain quorum queue: no TTL or dead-lettering acts on a message while it waits there.
HOLDING_ARGUMENTS: Final[dict[str, Any]] = {
    "x-queue-type": "quorum",
    "x-delivery-limit": KEEP_DELIVERY_LIMIT,
}
CHUNK: Final = 256  # messages whose copies are confirmed together
# What a queue adds when it delivers: counts of this queue, not of the message.
DELIVERY_HEADERS: Final = frozenset({"x-delivery-count", "x-acquired-count"})


class MigrationError(Exception):
    """A queue that cannot be migrated now; the message says why."""


def holding(spec: QueueSpec) -> QueueSpec:
    return QueueSpec(spec.name + HOLDING_SUFFIX, dict(HOLDING_ARGUMENTS), spec.bindings)


async def migrate(amqp: AmqpSettings, consumers: Mapping[str, ConsumerSettings]) -> dict[str, int]:
    """Migrate what differs: `aifi.unrouted` and the queues of `consumers`; return the
    messages moved, by queue (none: nothing differed)."""
    connection = await connect_first(amqp.urls, amqp.publish_timeout_s)
    async with connection:
        # First: declaring the exchanges declares `aifi.unrouted` too, with its new arguments.
        # Its binding needs its exchange, which a broker may not have yet.
        async with connection.channel() as channel:
            await declare_unrouted_exchange(channel)
        moved = await _each(connection, [topology.unrouted_spec()], amqp.publish_timeout_s)
        async with connection.channel() as channel:
            await topology.declare_exchanges(channel)
        moved |= await _each(connection, topology.all_specs(consumers), amqp.publish_timeout_s)
    return moved


async def _each(
    connection: AbstractConnection, queues: list[QueueSpec], timeout_s: float
) -> dict[str, int]:
    moved: dict[str, int] = {}
    for spec in queues:
        count = await migrate_queue(connection, spec, timeout_s)
        if count is not None:
            moved[spec.name] = count
    return moved


async def migrate_queue(
    connection: AbstractConnection, spec: QueueSpec, timeout_s: float
) -> int | None:
    """Migrate one queue if it differs or a move was left unfinished; None if untouched."""
    names = (spec.name, holding(spec).name)
    exists, leftover = [await _exists(connection, name, timeout_s) for name in names]
    current = exists and await _matches(connection, spec, timeout_s)
    if (current or not exists) and not leftover:
        return None
    log.info("migrating queue", extra={"queue": spec.name, "resuming": leftover})
    async with connection.channel(publisher_confirms=True, on_return_raises=True) as channel:
        if exists and not current:
            await _set_aside(channel, spec, timeout_s)
        async with asyncio.timeout(timeout_s):
            await topology.declare_spec(channel, spec)
        pen = await channel.get_queue(holding(spec).name, ensure=False)
        for exchange, key in spec.bindings:
            await pen.unbind(exchange, key, timeout=timeout_s)
        moved = await shovel(channel, pen.name, spec.name, timeout_s)
        await channel.queue_delete(pen.name, if_unused=False, if_empty=False, timeout=timeout_s)
    log.info("migrated queue", extra={"queue": spec.name, "moved": moved})
    return moved


async def _set_aside(channel: AbstractChannel, spec: QueueSpec, timeout_s: float) -> None:
    """Steps 1 and 2, then the old queue goes."""
    await _check_idle(channel, spec.name, timeout_s)
    async with asyncio.timeout(timeout_s):
        await topology.declare_spec(channel, holding(spec))
    # Bound to the holding queue now, the old one takes nothing more: else a stream faster
    # than the move keeps it going for ever, and what arrives meanwhile is copied twice.
    old = await channel.get_queue(spec.name, ensure=False)
    for exchange, key in spec.bindings:
        await old.unbind(exchange, key, timeout=timeout_s)
    await shovel(channel, spec.name, holding(spec).name, timeout_s)
    # A consumer that came meanwhile may hold messages: they would go with the queue.
    await _check_idle(channel, spec.name, timeout_s)
    await channel.queue_delete(spec.name, if_unused=False, if_empty=False, timeout=timeout_s)


async def shovel(channel: AbstractChannel, source: str, target: str, timeout_s: float) -> int:
    """Move every message of `source` to `target`, each acked once its copy is confirmed."""
    queue = await channel.get_queue(source, ensure=False)
    moved = 0
    while batch := await _take(queue, CHUNK, timeout_s):
        copies = (verbatim(message) for message in batch)
        await asyncio.gather(
            *(channel.default_exchange.publish(c, target, timeout=timeout_s) for c in copies)
        )
        await batch[-1].ack(multiple=True)
        moved += len(batch)
    await asyncio.sleep(ACK_GRACE_S)  # acks to a quorum queue land asynchronously
    return moved


async def _take(
    queue: aio_pika.abc.AbstractQueue, size: int, timeout_s: float
) -> list[AbstractIncomingMessage]:
    batch: list[AbstractIncomingMessage] = []
    while len(batch) < size and (
        message := await queue.get(no_ack=False, fail=False, timeout=timeout_s)
    ):
        batch.append(message)
    return batch


def verbatim(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The same message, less the old queue's delivery counts."""
    headers = {k: v for k, v in message.headers.items() if k not in DELIVERY_HEADERS}
    return copy(message, headers, message.delivery_mode, message.expiration)


async def _exists(connection: AbstractConnection, name: str, timeout_s: float) -> bool:
    async with connection.channel() as channel:
        try:
            await channel.declare_queue(name, passive=True, timeout=timeout_s)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
    return True


async def _matches(connection: AbstractConnection, spec: QueueSpec, timeout_s: float) -> bool:
    """True if the queue accepts a declare with the arguments of `spec`."""
    async with connection.channel() as channel:
        try:
            await channel.declare_queue(
                spec.name, durable=True, arguments=spec.arguments, timeout=timeout_s
            )
        except aiormq.exceptions.ChannelPreconditionFailed:
            return False
    return True


async def _check_idle(channel: AbstractChannel, name: str, timeout_s: float) -> None:
    declared = await channel.declare_queue(name, passive=True, timeout=timeout_s)
    consumers = declared.declaration_result.consumer_count or 0
    if consumers:
        raise MigrationError(
            f"queue {name} has {consumers} consumer(s): stop its workers, then migrate"
        )
