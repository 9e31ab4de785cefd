"""AMQP plumbing shared by the gateway and the workers: the errors that mean "the broker
is away", connecting to the first of several URLs, backoff, and the exchanges every
process declares."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any, Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from core import contract

log = logging.getLogger(__name__)

# ChannelInvalidStateError is a RuntimeError, not an AMQPError: it is what a
# publish on a channel closed under it raises.
BROKER_ERRORS: Final = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)

# RabbitMQ 4.x gives a quorum queue a delivery limit of 20 and deletes a message returned
# more often when the queue has no dead-letter exchange. A queue that must never drop
# (unrouted events, dead letters) states a limit no return loop reaches; not -1, which
# RabbitMQ 3.x applies as "dead-letter on the first return".
KEEP_DELIVERY_LIMIT: Final = 1_000_000_000
UNROUTED_ARGUMENTS: Final[dict[str, Any]] = {
    "x-queue-type": "quorum",
    "x-delivery-limit": KEEP_DELIVERY_LIMIT,
}


async def declare_topology(channel: AbstractChannel) -> AbstractExchange:
    """The durable topic exchange, with an alternate exchange keeping what matches no binding."""
    unrouted = await channel.declare_exchange(
        contract.UNROUTED_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )
    # Quorum, not classic: a classic queue lives on one node, and when that node
    # dies no survivor of a cluster may declare it, which would stop the gateway.
    queue = await channel.declare_queue(
        contract.UNROUTED_QUEUE, durable=True, arguments=UNROUTED_ARGUMENTS
    )
    await queue.bind(unrouted)
    return await channel.declare_exchange(
        contract.EXCHANGE,
        aio_pika.ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": contract.UNROUTED_EXCHANGE},
    )


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.partition(':')[0]}:***@{host}" if at else url


async def connect_first(urls: Sequence[str], timeout_s: float) -> AbstractConnection:
    """A connection to the first of `urls` that answers, for a one-off command."""
    failure: BaseException | None = None
    for url in urls:
        try:
            return await aio_pika.connect(url, timeout=timeout_s)
        except BROKER_ERRORS as exc:
            log.warning("amqp connection failed", extra={"url": redact(url), "error": repr(exc)})
            failure = exc
    raise ConnectionError(f"no broker answered at {len(urls)} URL(s)") from failure


def backoff_s(attempt: int, cap_s: float) -> float:
    return float(min(cap_s, 0.1 * 2**attempt))


async def first_of(*waitables: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
