"""The AMQP side: one connection with a confirming channel, kept up while the
`Publisher` is entered (`async with Publisher(settings) as publisher`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import ChannelFrame

from core import contract
from core.amqp import BROKER_ERRORS, declare_topology, first_of, reconnecting, redact
from core.contract import Outbound
from core.settings import AmqpSettings
from gateway.frames import PublishEncoder

log = logging.getLogger(__name__)

Confirmation = asyncio.Future[Any]


class PublishError(Exception):
    """The broker did not confirm a message: it is not safe."""


class Unencodable(PublishError):
    """AMQP cannot carry this message at all; trying again cannot help."""


class Publisher:
    """Publishes with confirms, pipelined: any number of callers await their own confirm."""

    def __init__(self, settings: AmqpSettings) -> None:
        self._settings = settings
        self._channel: aiormq.Channel | None = None
        self._encoder: PublishEncoder | None = None
        self._ready = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None
        self.reconnects = 0
        self.returns = 0

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def __aenter__(self) -> Publisher:
        """Connect, declare, and reconnect with backoff (each URL in turn) until the exit."""
        amqp = self._settings
        self._serving = asyncio.create_task(
            reconnecting(
                amqp.urls, self._serve, amqp.reconnect_max_s, on_reconnect=self._reconnected
            ),
            name="amqp-publisher",
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._serving = self._serving, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled():
                task.result()  # what ended it early

    def _reconnected(self) -> None:
        self.reconnects += 1

    async def _serve(self, url: str) -> None:
        connection = await aio_pika.connect(
            url, timeout=self._settings.publish_timeout_s, heartbeat=self._settings.heartbeat_s
        )
        # Closing the connection closes its channel: a channel of its own to close
        # would wait on the very node that stopped answering.
        async with connection:
            channel = await self._declared_channel(connection)
            underlay = await channel.get_underlay_channel()
            if not isinstance(underlay, aiormq.Channel):
                raise TypeError(f"aio-pika gave a {type(underlay).__name__}, not aiormq's Channel")
            self._channel = underlay
            self._encoder = PublishEncoder(
                underlay.number,
                contract.EXCHANGE,
                underlay.max_content_size,
                self._settings.max_message_bytes,
            )
            self._ready.set()
            log.info("amqp connected", extra={"url": redact(url)})
            try:
                await first_of(connection.closed(), channel.closed())
            finally:
                self._ready.clear()
                self._channel = self._encoder = None
        log.warning("amqp connection lost", extra={"url": redact(url)})

    async def _declared_channel(self, connection: AbstractConnection) -> AbstractChannel:
        """A confirming channel once the topology is declared, or TimeoutError.

        A node cut off from the majority of its cluster accepts the connection but
        holds every declaration (about 30 s on Khepri before it fails): bounded,
        so that the gateway moves on to the next URL.
        """
        async with asyncio.timeout(self._settings.declare_timeout_s):
            channel = await connection.channel(publisher_confirms=True)
            await declare_topology(channel)
        return channel

    async def publish(self, outbound: Outbound, timeout_s: float | None = None) -> None:
        """`send`, bounded: for a request whose answer waits on the confirm."""
        try:
            async with asyncio.timeout(timeout_s or self._settings.publish_timeout_s):
                await self.send(outbound)
        except TimeoutError as exc:
            raise PublishError("no confirm in time") from exc

    async def send(self, outbound: Outbound) -> None:
        """Publish one message and return once the broker confirmed it; `publish` bounds it.

        A lost connection fails every pending confirm at once.
        """
        [confirmation] = await self.write([outbound])
        await asyncio.wait([confirmation])
        self.check(confirmation)

    async def write(self, outbounds: Sequence[Outbound]) -> list[Confirmation]:
        """Write `outbounds` in one socket write; each gets a future its confirm settles.

        This bypasses aiormq's `basic_publish`, whose per-message objects, lock and
        write cost four times the CPU of the rest of the relay (measured under
        bench/), and registers each confirm where aiormq's reader settles it. A
        message AMQP cannot carry gets a future already failed with `Unencodable`.
        """
        await self._ready.wait()
        try:
            channel, encoder = self._channel, self._encoder
            if channel is None or encoder is None:
                raise PublishError("channel closed")
            # Bounded: aiormq's write queue is never read again once its writer
            # stopped with the connection, and a full one would block for good.
            async with asyncio.timeout(self._settings.publish_timeout_s), channel.lock:
                return await _write(channel, encoder, outbounds)
        except (*BROKER_ERRORS, asyncio.InvalidStateError) as exc:
            # InvalidStateError: the channel's futures were all rejected, it is closed.
            raise PublishError(type(exc).__name__) from exc

    def check(self, confirmation: Confirmation) -> None:
        """Return if the broker took the message; else raise `PublishError` saying why."""
        if confirmation.cancelled():
            raise PublishError("cancelled")
        exc = confirmation.exception()
        if isinstance(exc, PublishError):
            raise exc
        if exc is not None:
            raise PublishError(type(exc).__name__) from exc
        if isinstance(confirmation.result(), aiormq.abc.DeliveredMessage):
            # Only when the alternate exchange is gone: the event is in no queue.
            self.returns += 1
            raise PublishError("returned unroutable")


async def _write(
    channel: aiormq.Channel, encoder: PublishEncoder, outbounds: Sequence[Outbound]
) -> list[Confirmation]:
    encoded = _encode_all(encoder, outbounds)
    payload = b"".join(frames for frames in encoded if isinstance(frames, bytes))
    if payload:
        await channel.write_queue.put(ChannelFrame(payload=payload, should_close=False))
    # Delivery tags are taken only once the frames are queued, with no await in
    # between: a cancelled put takes none, and no confirm can arrive sooner.
    return [
        _failed(Unencodable(str(frames)))
        if isinstance(frames, ValueError)
        else _expect_confirm(channel, outbound.message_id)
        for outbound, frames in zip(outbounds, encoded, strict=True)
    ]


def _encode_all(encoder: PublishEncoder, outbounds: Sequence[Outbound]) -> list[bytes | ValueError]:
    encoded: list[bytes | ValueError] = []
    for outbound in outbounds:
        try:
            encoded.append(encoder.encode(outbound))
        except ValueError as exc:
            encoded.append(exc)
    return encoded


def _expect_confirm(channel: aiormq.Channel, message_id: str) -> Confirmation:
    """Take the next delivery tag, as aiormq's `basic_publish` would, so its reader settles it.

    The future comes first: on a closed channel `create_future` raises before any
    tag is taken, and as nothing runs between two calls, it raises on the first.
    """
    confirmation = channel.create_future()
    channel.delivery_tag += 1
    tag = channel.delivery_tag
    channel.confirmations[tag] = confirmation
    # A basic.return names the message by its message id only.
    channel.message_id_delivery_tag[message_id] = tag

    def forget(_: Confirmation) -> None:
        if channel.message_id_delivery_tag.get(message_id) == tag:
            del channel.message_id_delivery_tag[message_id]

    confirmation.add_done_callback(forget)
    return confirmation


def _failed(exc: Exception) -> Confirmation:
    confirmation: Confirmation = asyncio.get_running_loop().create_future()
    confirmation.set_exception(exc)
    return confirmation
