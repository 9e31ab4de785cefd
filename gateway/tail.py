"""`aifi-gateway tail`: print events as they arrive on the exchange, one JSON line each."""

from __future__ import annotations

import asyncio
import contextlib
import sys

from aio_pika.abc import AbstractIncomingMessage

from core import contract
from core.amqp import connect_first, declare_topology
from core.settings import AmqpSettings


def line(message: AbstractIncomingMessage) -> str:
    body = message.body.decode(errors="replace")
    return f"{message.routing_key} {message.message_id} {body}"


async def tail(amqp: AmqpSettings, binding: str) -> None:
    """Bind a private, self-deleting queue to `binding` and print what comes."""
    connection = await connect_first(amqp.urls, amqp.publish_timeout_s)
    async with connection, connection.channel() as channel:
        await declare_topology(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(contract.EXCHANGE, binding)
        print(f"tail: waiting for events on {contract.EXCHANGE} ({binding})", file=sys.stderr)
        async with queue.iterator(no_ack=True) as messages:
            async for message in messages:
                print(line(message), flush=True)


def run(amqp: AmqpSettings, binding: str) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(tail(amqp, binding))
