"""Move messages back for another try once the cause is fixed: a consumer's dead letters to
its queue, and the events `aifi.unrouted` holds to `aifi.events`, where they are routed anew."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractQueue

from consumers.settlement import ACK_GRACE_S, copy, replay_copy, without_broker_headers
from consumers.topology import declare
from core import contract
from core.amqp import connect_first
from core.settings import AmqpSettings, ConsumerSettings
from core.topology import all_specs, declare_exchanges, declare_spec

log = logging.getLogger(__name__)

# A message made anew, and the routing key it is published with.
Rebuild = Callable[[AbstractIncomingMessage], tuple[aio_pika.Message, str]]


async def replay(
    name: str, settings: ConsumerSettings, amqp: AmqpSettings, limit: int | None = None
) -> int:
    """Move up to `limit` messages from `aifi.<name>.dead` to `aifi.<name>`; return how many."""
    connection = await connect_first(amqp.urls, amqp.publish_timeout_s)
    async with (
        connection,
        connection.channel(publisher_confirms=True, on_return_raises=True) as channel,
    ):
        routes = await declare(channel, name, settings)
        moved = await _move_waiting(
            routes.dead_queue,
            routes.redeliver,
            lambda message: (replay_copy(message), name),
            limit,
            amqp.publish_timeout_s,
        )
    log.info("replayed", extra={"consumer": name, "moved": moved})
    return moved


async def replay_unrouted(
    amqp: AmqpSettings, consumers: Mapping[str, ConsumerSettings], limit: int | None = None
) -> int:
    """Publish up to `limit` events of `aifi.unrouted` to `aifi.events` again, once the queues
    of `consumers` exist; return how many. One that still matches no binding goes back to
    `aifi.unrouted`. For events accepted before any worker had declared its queue."""
    connection = await connect_first(amqp.urls, amqp.publish_timeout_s)
    async with connection, connection.channel(publisher_confirms=True) as channel:
        events = (await declare_exchanges(channel))[contract.EXCHANGE]
        for spec in all_specs(consumers):
            await declare_spec(channel, spec)
        unrouted = await channel.declare_queue(contract.UNROUTED_QUEUE, passive=True)
        moved = await _move_waiting(unrouted, events, _as_published, limit, amqp.publish_timeout_s)
    log.info("replayed unrouted", extra={"moved": moved})
    return moved


def _as_published(message: AbstractIncomingMessage) -> tuple[aio_pika.Message, str]:
    return copy(message, without_broker_headers(message.headers)), message.routing_key or ""


async def _move_waiting(
    source: AbstractQueue,
    target: AbstractExchange,
    rebuild: Rebuild,
    limit: int | None,
    timeout_s: float,
) -> int:
    # Only what waits now: a message that comes back to `source` while we run (it failed
    # again, or still matches no binding) must not come round a second time.
    waiting = source.declaration_result.message_count or 0
    budget = waiting if limit is None else min(limit, waiting)
    moved = await _move(source, target, rebuild, budget, timeout_s)
    await asyncio.sleep(ACK_GRACE_S)
    return moved


async def _move(
    source: AbstractQueue,
    target: AbstractExchange,
    rebuild: Rebuild,
    budget: int,
    timeout_s: float,
) -> int:
    moved = 0
    while moved < budget:
        message = await source.get(no_ack=False, fail=False, timeout=timeout_s)
        if message is None:
            break
        # Confirmed before the old copy goes: a failure in between leaves a duplicate
        # (harmless to an idempotent handler), never a loss.
        again, routing_key = rebuild(message)
        await target.publish(again, routing_key, timeout=timeout_s)
        await message.ack()
        moved += 1
    return moved
