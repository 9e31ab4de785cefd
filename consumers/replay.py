"""Move dead letters back to their consumer's queue for another try, once the cause is fixed."""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractExchange, AbstractQueue

from consumers.settlement import ACK_GRACE_S, replay_copy
from consumers.topology import declare
from core.amqp import connect_first
from core.settings import AmqpSettings, ConsumerSettings

log = logging.getLogger(__name__)


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
        # Only what is dead now: a message that fails again while we run must not come round
        # a second time.
        waiting = routes.dead_queue.declaration_result.message_count or 0
        budget = waiting if limit is None else min(limit, waiting)
        moved = await _move(
            routes.dead_queue, routes.redeliver, name, budget, amqp.publish_timeout_s
        )
        await asyncio.sleep(ACK_GRACE_S)
    log.info("replayed", extra={"consumer": name, "moved": moved, "was_waiting": waiting})
    return moved


async def _move(
    dead: AbstractQueue, redeliver: AbstractExchange, name: str, budget: int, timeout_s: float
) -> int:
    moved = 0
    while moved < budget:
        message = await dead.get(no_ack=False, fail=False, timeout=timeout_s)
        if message is None:
            break
        # Confirmed before the dead copy goes: a failure in between leaves a duplicate
        # (harmless to an idempotent handler), never a loss.
        await redeliver.publish(replay_copy(message), name, timeout=timeout_s)
        await message.ack()
        moved += 1
    return moved
