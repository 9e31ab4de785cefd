"""The AMQP side: one connection with a confirming channel, kept up while the
`Publisher` is entered (`async with Publisher(amqp, consumers) as publisher`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final, Generic, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic

from core import contract
from core.aio import cancel_and_wait, first_of, stop_task
from core.amqp import BROKER_ERRORS, reconnecting
from core.contract import Outbound
from core.logs import redact
from core.settings import AmqpSettings, ConsumerSettings
from core.topology import (
    QueueSpec,
    TopologyError,
    all_specs,
    bind_existing,
    declare_exchanges,
    declare_spec,
)
from core.tracing import Tracer
from gateway import spans
from gateway.frames import PublishEncoder

log = logging.getLogger(__name__)

T = TypeVar("T")
# What the broker said of each message: None if it confirmed it, else why it is not safe.
Outcomes = list[tuple[T, "PublishError | None"]]
Settle = Callable[[Outcomes[T]], None]


class PublishError(Exception):
    """The broker did not confirm a message: it is not safe."""


class Unencodable(PublishError):
    """AMQP cannot carry this message at all; trying again cannot help."""


class Publisher:
    """Publishes with confirms, pipelined: any number of callers await their own confirm."""

    def __init__(
        self,
        settings: AmqpSettings,
        consumers: Mapping[str, ConsumerSettings],
        tracer: Tracer | None = None,
    ) -> None:
        self._settings = settings
        self._tracer = tracer
        # Declared at each connection: what is accepted before a worker first ran (or after
        # the broker lost its data) waits in its consumer's queue, not in `aifi.unrouted`.
        self._queues = all_specs(consumers)
        self._channel: aiormq.Channel | None = None
        self._encoder: PublishEncoder | None = None
        self._confirms: Confirms[Any] | None = None
        self._ready = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None
        self._lingering: set[asyncio.Future[None]] = set()
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
        await stop_task(task)
        # A close still lingering would outlive the loop: given its time, then cancelled.
        if self._lingering:
            timeout_s = self._settings.publish_timeout_s
            _, pending = await asyncio.wait(self._lingering, timeout=timeout_s)
            await cancel_and_wait(*pending, timeout_s=timeout_s)

    def _reconnected(self) -> None:
        self.reconnects += 1

    async def _serve(self, url: str) -> None:
        connection = await aio_pika.connect(
            url, timeout=self._settings.publish_timeout_s, heartbeat=self._settings.heartbeat_s
        )
        # Closing the connection closes its channel: a channel of its own to close
        # would wait on the very node that stopped answering.
        silent = asyncio.Event()
        async with _closing(connection, self._settings.publish_timeout_s, self._lingering, silent):
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
            confirms: Confirms[Any] = Confirms(underlay, self)
            self._confirms = confirms
            self._ready.set()
            log.info("amqp connected", extra={"url": redact(url)})
            try:
                await first_of(
                    connection.closed(),
                    channel.closed(),
                    self._unanswered(underlay, confirms, silent),
                )
            finally:
                self._ready.clear()
                self._channel = self._encoder = self._confirms = None
                # No confirm can come any more: what waits on one is not safe.
                confirms.fail_all(PublishError("connection lost"))
        log.warning("amqp connection lost", extra={"url": redact(url)})

    async def _unanswered(
        self, channel: aiormq.Channel, confirms: Confirms[Any], silent: asyncio.Event
    ) -> None:
        """Return once a confirm is overdue by `publish_timeout_s` on a connection that the
        broker has not blocked (a memory or disk alarm, which only holds confirms back).

        A node cut off from the network, or reached by a link that drops one way, keeps
        the TCP connection open and silent until the heartbeat gives up, minutes later:
        meanwhile nothing is confirmed, though another node of the cluster could.
        """
        limit_s = self._settings.publish_timeout_s
        while True:
            await asyncio.sleep(limit_s / 4)
            if confirms.waited_s() > limit_s and not _blocked(channel.connection):
                log.warning("amqp confirms overdue; leaving the node", extra={"after_s": limit_s})
                silent.set()
                return

    async def _declared_channel(self, connection: AbstractConnection) -> AbstractChannel:
        """A confirming channel once the exchanges and the consumers' queues are declared,
        or TimeoutError.

        A node cut off from the majority of its cluster accepts the connection but
        holds every declaration (about 30 s on Khepri before it fails): bounded,
        so that the gateway moves on to the next URL.
        """
        started = time.perf_counter()
        async with asyncio.timeout(self._settings.declare_timeout_s):
            channel = await connection.channel(publisher_confirms=True)
            await declare_exchanges(channel)
            for spec in self._queues:
                channel = await _declare_queue(connection, channel, spec)
        took_ms = round((time.perf_counter() - started) * 1000, 1)
        log.info("amqp topology declared", extra={"queues": len(self._queues), "took_ms": took_ms})
        return channel

    async def write(self, messages: Sequence[tuple[Outbound, T]], settle: Settle[T]) -> None:
        """Write `messages` in one socket write; `settle` learns what became of each token.

        `settle` is called with (token, None) for each message the broker confirmed and
        (token, PublishError) for each it did not (nacked, returned, connection lost), in
        one call per confirm frame of the broker: an ack of many delivery tags settles
        them in one pass. A message AMQP cannot carry is settled with `Unencodable`
        without being written. Raises `PublishError` if none of them was written.

        This bypasses aiormq's `basic_publish`, whose per-message objects, lock and
        write cost four times the CPU of the rest of the relay (measured under bench/).
        """
        if self._tracer is None:
            await self._send(messages, settle)
            return
        traced, settled = spans.publishing(self._tracer, messages, settle)
        try:
            await self._send(traced, settled)
        except PublishError as exc:
            spans.abandoned(traced, exc)
            raise

    async def _send(self, messages: Sequence[tuple[Outbound, T]], settle: Settle[T]) -> None:
        await self._ready.wait()
        try:
            channel, encoder, confirms = self._channel, self._encoder, self._confirms
            if channel is None or encoder is None or confirms is None:
                raise PublishError("channel closed")
            # Bounded: aiormq's write queue is never read again once its writer
            # stopped with the connection, and a full one would block for good.
            async with asyncio.timeout(self._settings.publish_timeout_s), channel.lock:
                await _write(channel, encoder, confirms, messages, settle)
        except BROKER_ERRORS as exc:
            raise PublishError(type(exc).__name__) from exc

    def returned(self) -> PublishError:
        # Only when the alternate exchange is gone: the event is in no queue.
        self.returns += 1
        return PublishError("returned unroutable")


async def _declare_queue(
    connection: AbstractConnection, channel: AbstractChannel, spec: QueueSpec
) -> AbstractChannel:
    """Declare `spec` on `channel`; the channel to go on with.

    A queue an earlier release declared with other arguments stays as it is until `migrate`
    moves it: bound as it is, it still receives its events, and the gateway goes on.
    """
    try:
        await declare_spec(channel, spec)
    except TopologyError as exc:
        log.warning(
            "queue exists with other arguments: bound as it is; stop its workers and run "
            "`aifi-consumer migrate`",
            extra={"queue": spec.name, "error": str(exc.__cause__)},
        )
        # The broker closed the channel that tried.
        channel = await connection.channel(publisher_confirms=True)
        await bind_existing(channel, spec)
    return channel


async def _write(
    channel: aiormq.Channel,
    encoder: PublishEncoder,
    confirms: Confirms[T],
    messages: Sequence[tuple[Outbound, T]],
    settle: Settle[T],
) -> None:
    payloads: list[bytes] = []
    written: list[tuple[str, T]] = []
    unencodable: Outcomes[T] = []
    for outbound, token in messages:
        try:
            payloads.append(encoder.encode(outbound))
        except ValueError as exc:
            unencodable.append((token, Unencodable(str(exc))))
        else:
            written.append((outbound.message_id, token))
    if payloads:
        await channel.write_queue.put(ChannelFrame(payload=b"".join(payloads), should_close=False))
    # Delivery tags are taken only once the frames are queued, with no await in
    # between: a cancelled put takes none, and no confirm can arrive sooner. A
    # connection lost during the put failed what was pending before these.
    if written and (confirms.failed or channel.is_closed):
        raise PublishError("channel closed")
    confirms.expect(written, settle)
    if unencodable:
        asyncio.get_running_loop().call_soon(settle, unencodable)


@contextlib.asynccontextmanager
async def _closing(
    connection: AbstractConnection,
    timeout_s: float,
    lingering: set[asyncio.Future[None]],
    silent: asyncio.Event,
) -> AsyncIterator[None]:
    """Close `connection` at the end; after a node fell `silent`, waiting `timeout_s` at most.

    A graceful close drains the socket and awaits the broker's answer, which a node that
    stopped answering never gives, and aiormq's close cannot be cancelled meanwhile: it
    goes on in the background (kept in `lingering`) until aiormq gives up on the socket.
    """
    try:
        yield
    finally:
        if silent.is_set():
            closing = asyncio.ensure_future(connection.close())
            await asyncio.wait([closing], timeout=timeout_s)
            if not closing.done():
                lingering.add(closing)
                closing.add_done_callback(lingering.discard)
        else:
            # A node that answers closes at once (or the exit cancels the close).
            await connection.close()


def _blocked(connection: object) -> bool:
    """Whether the broker blocked the connection (connection.blocked, not yet unblocked)."""
    unblocked = getattr(connection, UNBLOCKED_EVENT, None)
    return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()


# aiormq 7.2 keeps the blocked state only in this private event (set while unblocked).
UNBLOCKED_EVENT: Final = "_Connection__connection_unblocked"


class _Pending(Generic[T]):
    """One message awaiting its confirm. aiormq's reader finds it by message id when the
    broker returns the message, and calls `set_result` or `set_exception` on it."""

    __slots__ = ("message_id", "returned", "settle", "token")

    def __init__(self, message_id: str, token: T, settle: Settle[T]) -> None:
        self.message_id = message_id
        self.token = token
        self.settle = settle
        self.returned = False

    def done(self) -> bool:
        return self.returned

    def set_result(self, _: object) -> None:
        self.returned = True

    def set_exception(self, _: BaseException) -> None:
        self.returned = True


# The aiormq 7.2 internals the publisher relies on (pyproject.toml pins aiormq to 7.2.x, and
# tests/test_publisher.py checks them): the channel's delivery tag counter, its
# `confirmations` and `message_id_delivery_tag`, where its reader looks up a returned
# message, and `_on_confirm_frame`, which its reader awaits for every basic.ack and basic.nack.
AIORMQ_INTERNALS: Final = (
    "delivery_tag",
    "confirmations",
    "message_id_delivery_tag",
    "_on_confirm_frame",
)


class Confirms(Generic[T]):
    """The confirms a channel awaits, settled in bulk: replaces aiormq's settlement, which
    takes a future, a `call_soon` and three callbacks per message, and walks every pending
    confirm on each ack."""

    def __init__(self, channel: aiormq.Channel, publisher: Publisher) -> None:
        missing = [name for name in AIORMQ_INTERNALS if not hasattr(channel, name)]
        if missing:
            raise TypeError(f"aiormq's Channel lacks {missing}: see AIORMQ_INTERNALS")
        self._channel = channel
        self._publisher = publisher
        self._pending: OrderedDict[int, _Pending[T]] = OrderedDict()
        # (last delivery tag, monotonic time) of each write: one entry per write, not per
        # message, to tell how long the oldest pending confirm has been awaited.
        self._writes: deque[tuple[int, float]] = deque()
        self.failed = False
        # The reader awaits the instance's attribute: this takes over every confirm frame.
        setattr(channel, "_on_confirm_frame", self._on_confirm_frame)  # noqa: B010

    def expect(self, written: Sequence[tuple[str, T]], settle: Settle[T]) -> None:
        """Take the next delivery tags, as aiormq's `basic_publish` would."""
        channel, pending = self._channel, self._pending
        by_message_id, returnable = channel.message_id_delivery_tag, channel.confirmations
        tag = channel.delivery_tag
        for message_id, token in written:
            tag += 1
            entry = _Pending(message_id, token, settle)
            pending[tag] = entry
            # A basic.return names the message by its message id only.
            by_message_id[message_id] = tag
            returnable[tag] = entry  # type: ignore[assignment]
        channel.delivery_tag = tag
        self._writes.append((tag, time.monotonic()))

    def waited_s(self) -> float:
        """How long the oldest pending confirm has been awaited; 0 when none is."""
        pending, writes = self._pending, self._writes
        if not pending:
            writes.clear()
            return 0.0
        oldest = next(iter(pending))
        while writes and writes[0][0] < oldest:
            writes.popleft()
        return time.monotonic() - writes[0][1] if writes else 0.0

    async def _on_confirm_frame(self, frame: Basic.Ack | Basic.Nack) -> None:
        self.settle(frame.delivery_tag, frame.multiple, isinstance(frame, Basic.Ack))

    def settle(self, delivery_tag: int, multiple: bool, acked: bool) -> None:
        """Settle `delivery_tag`, and every tag before it if `multiple`, in one pass."""
        pending = self._pending
        if multiple:
            settled = []
            while pending and next(iter(pending)) <= delivery_tag:
                settled.append(pending.popitem(last=False))
        elif (entry := pending.pop(delivery_tag, None)) is not None:
            settled = [(delivery_tag, entry)]
        else:
            return
        self._forget(settled)
        error = None if acked else PublishError("DeliveryError: nacked")
        publisher = self._publisher
        self._notify(
            [(entry, publisher.returned() if entry.returned else error) for _, entry in settled]
        )

    def _forget(self, settled: list[tuple[int, _Pending[T]]]) -> None:
        channel = self._channel
        by_message_id, returnable = channel.message_id_delivery_tag, channel.confirmations
        for tag, entry in settled:
            returnable.pop(tag, None)
            if by_message_id.get(entry.message_id) == tag:
                del by_message_id[entry.message_id]

    def fail_all(self, error: PublishError) -> None:
        """The channel is gone: nothing pending will be confirmed."""
        self.failed = True
        settled = list(self._pending.items())
        self._pending.clear()
        self._notify([(entry, error) for _, entry in settled])

    @staticmethod
    def _notify(outcomes: list[tuple[_Pending[T], PublishError | None]]) -> None:
        """One call of `settle` per run of messages of one write, in the order written."""
        if not outcomes:
            return
        settle = outcomes[0][0].settle
        run: Outcomes[T] = []
        for entry, error in outcomes:
            # Equal, not identical: a bound method is a new object at each `write`.
            if entry.settle != settle:
                settle(run)
                settle, run = entry.settle, []
            run.append((entry.token, error))
        settle(run)
