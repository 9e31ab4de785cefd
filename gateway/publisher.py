"""The AMQP side: one connection with a confirming channel, kept up by `Publisher.run`."""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, DeliveryMode

from gateway import contract
from gateway.contract import Outbound
from gateway.settings import AmqpSettings

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


class PublishError(Exception):
    """The broker did not confirm a message: it is not safe."""


class Unencodable(PublishError):
    """AMQP cannot carry this message at all; trying again cannot help."""


async def declare_topology(channel: AbstractChannel) -> AbstractExchange:
    """The durable topic exchange, with an alternate exchange keeping what matches no binding."""
    unrouted = await channel.declare_exchange(
        contract.UNROUTED_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )
    # Quorum, not classic: a classic queue lives on one node, and when that node
    # dies no survivor of a cluster may declare it, which would stop the gateway.
    queue = await channel.declare_queue(
        contract.UNROUTED_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await queue.bind(unrouted)
    return await channel.declare_exchange(
        contract.EXCHANGE,
        aio_pika.ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": contract.UNROUTED_EXCHANGE},
    )


def properties(outbound: Outbound) -> aiormq.spec.Basic.Properties:
    return aiormq.spec.Basic.Properties(
        content_type=outbound.content_type,
        delivery_mode=int(DeliveryMode.PERSISTENT),
        message_id=outbound.message_id,
        timestamp=datetime.fromtimestamp(outbound.timestamp_s, UTC),
        headers=dict(outbound.headers),
    )


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.partition(':')[0]}:***@{host}" if at else url


def backoff_s(attempt: int, cap_s: float) -> float:
    return float(min(cap_s, 0.1 * 2**attempt))


class Publisher:
    """Publishes with confirms, pipelined: any number of callers await their own confirm."""

    def __init__(self, settings: AmqpSettings) -> None:
        self._settings = settings
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._ready = asyncio.Event()
        self.reconnects = 0
        self.returns = 0

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def run(self) -> None:
        """Connect, declare, and reconnect with backoff for as long as the task lives."""
        attempt = 0
        for url in itertools.cycle(self._settings.urls):
            try:
                await self._serve(url)
                attempt = 0
            except BROKER_ERRORS as exc:
                log.warning(
                    "amqp connection failed", extra={"url": redact(url), "error": repr(exc)}
                )
            except Exception:
                # The outermost loop: whatever broke, the gateway must reconnect.
                log.exception("amqp connection broke unexpectedly", extra={"url": redact(url)})
            self.reconnects += 1
            await asyncio.sleep(backoff_s(attempt, self._settings.reconnect_max_s))
            attempt += 1

    async def _serve(self, url: str) -> None:
        connection = await aio_pika.connect(
            url, timeout=self._settings.publish_timeout_s, heartbeat=self._settings.heartbeat_s
        )
        async with connection, connection.channel(publisher_confirms=True) as channel:
            await declare_topology(channel)
            self._channel = await channel.get_underlay_channel()
            self._ready.set()
            log.info("amqp connected", extra={"url": redact(url)})
            try:
                await first_of(connection.closed(), channel.closed())
            finally:
                self._ready.clear()
                self._channel = None
        log.warning("amqp connection lost", extra={"url": redact(url)})

    async def publish(self, outbound: Outbound, timeout_s: float | None = None) -> None:
        """`send`, bounded: for a request whose answer waits on the confirm."""
        try:
            async with asyncio.timeout(timeout_s or self._settings.publish_timeout_s):
                await self.send(outbound)
        except TimeoutError as exc:
            raise PublishError("no confirm in time") from exc

    async def send(self, outbound: Outbound) -> None:
        """Wait for a channel, publish, and return once the broker confirmed.

        Unbounded, for the relay: a slow confirm is not a failure, and a lost
        connection fails every pending confirm at once. It publishes on aiormq's
        channel under aio-pika's, skipping the Message and Exchange layers, which
        cost about as much as the publish itself (measured under bench/).
        """
        try:
            await self._ready.wait()
            channel = self._channel
            if channel is None:
                raise PublishError("channel closed")
            returned = await channel.basic_publish(
                outbound.body,
                exchange=contract.EXCHANGE,
                routing_key=outbound.routing_key,
                properties=properties(outbound),
                mandatory=True,
            )
        except BROKER_ERRORS as exc:
            raise PublishError(type(exc).__name__) from exc
        except (TypeError, ValueError, struct.error) as exc:
            # pamqp's refusal of a property or header value, before anything was sent.
            raise Unencodable(str(exc)) from exc
        if isinstance(returned, aiormq.abc.DeliveredMessage):
            # Only when the alternate exchange is gone: the event is in no queue.
            self.returns += 1
            raise PublishError("returned unroutable")


async def first_of(*waitables: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
