"""Settling a delivery: ack it, retry it later through a delay queue, or dead-letter it.

Retries and dead letters are copies that we publish with our headers (attempts, reason)
and the original is acked only once the broker has confirmed the copy, so a crash at any
point leaves the event in at least one queue. The broker's own dead-lettering (delivery
limit exceeded: a message that keeps killing its worker) is the backstop for what a worker
never gets to settle.

Settlement is explicit (`ack`, `reject`) rather than `message.process()`: a delivery is
acked only after its batch commits or after its copy is confirmed, and `process()` settles
one message when its own block ends, which fits neither.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, DateType, DeliveryMode

from consumers.handler import Reject
from consumers.state import ConsumerState
from consumers.topology import Topology
from core import topology
from core.contract import (
    ATTEMPTS_HEADER,
    FAILED_AT_HEADER,
    REASON_HEADER,
    REPLAYS_HEADER,
    body_traceparent,
    trace_id,
)
from core.settings import ConsumerSettings
from core.times import iso

log = logging.getLogger(__name__)

MAX_REASON_CHARS: Final = 1000
# Headers of ours that a replayed copy starts without.
FAILURE_HEADERS: Final = frozenset({ATTEMPTS_HEADER, REASON_HEADER, FAILED_AT_HEADER})
# The broker's headers (x-death, x-delivery-count, x-acquired-count since 4.3, ...) speak of
# an earlier life of the message in another queue, and each release may add one: a copy
# goes without every one of them.
BROKER_PREFIX: Final = "x-"
# RabbitMQ applies acks to a quorum queue asynchronously and may drop those still in flight
# when the channel closes (rabbitmq-server#10327): they come back as redeliveries. Before a
# planned close, this pause lets them land.
ACK_GRACE_S: Final = 0.3
PUBLISH_FAILED: Final = (
    aio_pika.exceptions.DeliveryError,  # the broker nacked the copy
    aio_pika.exceptions.PublishError,  # the copy was unroutable: a delay queue is missing
    asyncio.TimeoutError,
)


def tag(message: AbstractIncomingMessage) -> int:
    """The delivery tag (always set on a delivery from a consumer)."""
    return message.delivery_tag or 0


def failures(message: AbstractIncomingMessage) -> int:
    value = message.headers.get(ATTEMPTS_HEADER)
    return value if isinstance(value, int) and value > 0 else 0


def describe(exc: BaseException) -> str:
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:MAX_REASON_CHARS]


def copy(
    message: AbstractIncomingMessage,
    headers: dict[str, Any],
    delivery_mode: DeliveryMode | int | None = DeliveryMode.PERSISTENT,
    expiration: DateType = None,
) -> aio_pika.Message:
    """The same message with other headers (user_id is left out: the broker checks it
    against the user that publishes); persistent unless told otherwise."""
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=delivery_mode,
        expiration=expiration,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


def without_broker_headers(headers: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in headers.items() if not k.startswith(BROKER_PREFIX)}


def failed_copy(message: AbstractIncomingMessage, attempts: int, reason: str) -> aio_pika.Message:
    """The copy that carries a failed attempt to a delay queue or to the dead letters."""
    headers = without_broker_headers(message.headers) | {
        ATTEMPTS_HEADER: attempts,
        REASON_HEADER: reason,
        FAILED_AT_HEADER: iso(datetime.now(UTC)),
    }
    return copy(message, headers)


def replay_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    """A dead letter made new: a full set of attempts, its replay counted."""
    headers = without_broker_headers(message.headers)
    headers = {k: v for k, v in headers.items() if k not in FAILURE_HEADERS}
    replays = message.headers.get(REPLAYS_HEADER)
    headers[REPLAYS_HEADER] = (replays if isinstance(replays, int) else 0) + 1
    return copy(message, headers)


class Settler:
    """Settles the deliveries of one consumer on the channel they arrived on."""

    def __init__(
        self,
        name: str,
        settings: ConsumerSettings,
        routes: Topology,
        state: ConsumerState,
        publish_timeout_s: float,
    ) -> None:
        self._name = name
        self._settings = settings
        self._routes = routes
        self._state = state
        self._timeout_s = publish_timeout_s
        # Delivery tags received and not yet settled: what a multiple ack must not cover.
        self._in_hand: set[int] = set()

    def received(self, message: AbstractIncomingMessage) -> None:
        self._in_hand.add(tag(message))

    async def ack(self, message: AbstractIncomingMessage) -> None:
        self._in_hand.discard(tag(message))
        await message.ack()
        self._state.acked += 1

    async def ack_all(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        """Ack a batch, in one frame when no older delivery is still unsettled."""
        last = max(messages, key=tag)
        self._in_hand.difference_update(tag(message) for message in messages)
        if self._in_hand and min(self._in_hand) < tag(last):
            for message in messages:
                await message.ack()
        else:
            await last.ack(multiple=True)
        self._state.acked += len(messages)

    async def fail(self, message: AbstractIncomingMessage, exc: Exception) -> None:
        """Retry after a backoff, or dead-letter: at once if rejected, else when out of attempts."""
        attempts = failures(message) + 1
        if isinstance(exc, Reject) or attempts >= self._settings.max_attempts:
            await self._dead_letter(message, attempts, describe(exc))
        else:
            await self._retry(message, attempts, describe(exc))

    async def _retry(self, message: AbstractIncomingMessage, attempts: int, reason: str) -> None:
        delay_ms = topology.backoff_ms(self._settings, attempts)
        key = topology.delay_key(self._name, delay_ms)
        if await self._move(message, self._routes.delay, key, attempts, reason):
            self._state.retried += 1
            log.warning("retrying later", extra=self._fields(message, attempts, reason, delay_ms))

    async def _dead_letter(
        self, message: AbstractIncomingMessage, attempts: int, reason: str
    ) -> None:
        if await self._move(message, self._routes.dead, self._name, attempts, reason):
            self._state.dead_lettered += 1
            log.error("dead-lettered", extra=self._fields(message, attempts, reason, None))

    async def _move(
        self,
        message: AbstractIncomingMessage,
        exchange: AbstractExchange,
        routing_key: str,
        attempts: int,
        reason: str,
    ) -> bool:
        """Publish a copy with our headers, and ack the original only once the copy is confirmed."""
        failed = failed_copy(message, attempts, reason)
        try:
            await exchange.publish(failed, routing_key, timeout=self._timeout_s)
        except PUBLISH_FAILED as exc:
            await self._give_back(message, exc)
            return False
        self._in_hand.discard(tag(message))
        await message.ack()
        return True

    async def _give_back(self, message: AbstractIncomingMessage, exc: BaseException) -> None:
        """The copy is not safe, so the original must stay in the queue."""
        log.error(
            "cannot move message; requeueing it",
            extra={
                "consumer": self._name,
                "event_id": message.message_id,
                "trace_id": trace_id(body_traceparent(message.body)),
                "error": describe(exc),
            },
        )
        # A pause, so that a broker refusing our copies is not answered with a hot loop.
        await asyncio.sleep(self._settings.retry_base_ms / 1000)
        # reject, not nack: RabbitMQ 4.3+ counts only reject against the delivery limit, which
        # then dead-letters a message we can never move instead of redelivering it forever.
        self._in_hand.discard(tag(message))
        await message.reject(requeue=True)
        self._state.requeued += 1

    def _fields(
        self, message: AbstractIncomingMessage, attempts: int, reason: str, delay_ms: int | None
    ) -> dict[str, Any]:
        return {
            "consumer": self._name,
            "event_id": message.message_id,
            "trace_id": trace_id(body_traceparent(message.body)),
            "attempts": attempts,
            "reason": reason,
            "delay_ms": delay_ms,
        }
