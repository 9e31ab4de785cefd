"""AMQP plumbing shared by the gateway and the workers: the errors that mean "the broker
is away", connecting to the first of several URLs, the reconnect loop and its backoff,
and the exchanges every process declares."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from core import contract
from core.aio import backoff_s, paused
from core.logs import redact

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


async def declare_unrouted_exchange(channel: AbstractChannel) -> AbstractExchange:
    """The alternate exchange of `aifi.events`, feeding the queue `aifi.unrouted`."""
    return await channel.declare_exchange(
        contract.UNROUTED_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )


async def declare_topology(channel: AbstractChannel) -> AbstractExchange:
    """The durable topic exchange, with an alternate exchange keeping what matches no binding."""
    unrouted = await declare_unrouted_exchange(channel)
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


Session = Callable[[str], Awaitable[None]]


def _nothing(*_: object) -> None:
    return None


async def reconnecting(
    urls: Sequence[str],
    session: Session,
    reconnect_max_s: float,
    *,
    stop: asyncio.Event | None = None,
    fatal: tuple[type[Exception], ...] = (),
    on_failure: Callable[[Exception], None] = _nothing,
    on_reconnect: Callable[[], None] = _nothing,
    log_extra: Mapping[str, object] | None = None,
) -> None:
    """Run `session(url)` on each of `urls` in turn, again and again, with backoff between.

    A session returns when its connection ends; one that raises is logged (`on_failure`
    is told) and the next URL is tried. The pause grows with failures in a row and starts
    over after a session that ended by itself. The loop ends when `stop` is set (a session
    must return by itself then), when a `fatal` error is raised, or when it is cancelled.
    """
    attempt = 0
    for url in itertools.cycle(urls):
        try:
            await session(url)
            attempt = 0
        except fatal:
            raise
        # The outermost loop: whatever broke, the process must connect again.
        except Exception as exc:
            log_failure(url, exc, log_extra or {})
            on_failure(exc)
        if cancel_requested():
            raise asyncio.CancelledError
        if await paused(backoff_s(attempt, reconnect_max_s), stop):
            return
        attempt += 1
        on_reconnect()


def cancel_requested() -> bool:
    """True if the running task was told to stop yet goes on: Python 3.11's `wait_for`
    (aio-pika connects with it) can turn a cancellation into the error it waited for."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def log_failure(url: str, exc: Exception, extra: Mapping[str, object]) -> None:
    """Say why a session on `url` failed, as loud as its cause deserves."""
    where = {**extra, "url": redact(url), "error": repr(exc)}
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        # A queue an earlier release declared with other arguments: only an operator
        # can move its messages over, so say how.
        log.error(
            "topology differs from what this release declares; stop the workers "
            "and run `aifi-consumer migrate`",
            extra=where,
        )
    elif isinstance(exc, BROKER_ERRORS):
        log.warning("amqp connection failed", extra=where)
    else:
        log.error("amqp session broke unexpectedly", exc_info=exc, extra=where)
