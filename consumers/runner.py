"""The worker: consume one queue in batches, settle every delivery, reconnect by itself."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Sequence
from typing import Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from consumers import spans
from consumers.handler import Handlers, Reject, RetryLater
from consumers.settlement import ACK_GRACE_S, Settler, describe
from consumers.state import ConsumerState
from consumers.topology import declare
from core import contract
from core.aio import cancel_and_wait, first_of, stop_task
from core.amqp import BROKER_ERRORS, reconnecting
from core.contract import Event, InvalidEvent
from core.logs import redact
from core.settings import AmqpSettings, ConsumerSettings
from core.topology import TopologyError
from core.tracing import Tracer

log = logging.getLogger(__name__)

Delivery = AbstractIncomingMessage
# Deliveries in hand; None marks the end, once the consumer is cancelled.
Inbox = asyncio.Queue[Delivery | None]
Decoded = tuple[Delivery, Event]
END: Final = None
# How often a worker counts what waits in its queues and in `aifi.unrouted` (for /metrics).
QUEUE_COUNT_INTERVAL_S: Final = 15.0


class ConnectionLost(ConnectionError):
    """The broker closed the connection or the channel under us."""


class ConsumerCancelled(ConnectionError):
    """The broker cancelled our consumer: its queue was deleted, or a delivery outlived the
    broker's consumer timeout. The channel stays open and nothing more would arrive."""


class HandlerTimeout(RetryLater):
    """The handler did not finish within `handler_timeout_s`: a failed attempt."""


async def broker_cancel(channel: AbstractChannel) -> asyncio.Future[None]:
    """A future that resolves when the broker cancels a consumer of `channel`."""
    cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def note(_: object) -> None:
        if not cancelled.done():
            cancelled.set_result(None)

    (await channel.get_underlay_channel()).on_consumer_cancel_callbacks.add(note)
    return cancelled


async def take(inbox: Inbox, size: int, linger_s: float) -> list[Delivery]:
    """Up to `size` deliveries: wait for one, linger briefly for more; [] at the end mark."""
    first = await inbox.get()
    if first is END:
        return []
    batch = [first]
    if not _fill(batch, inbox, size) and len(batch) < size and linger_s > 0:
        await asyncio.sleep(linger_s)
        _fill(batch, inbox, size)
    return batch


def _fill(batch: list[Delivery], inbox: Inbox, size: int) -> bool:
    """Move what is waiting into `batch`; True if it met the end mark, which stays queued."""
    while len(batch) < size and not inbox.empty():
        item = inbox.get_nowait()
        if item is END:
            inbox.put_nowait(END)
            return True
        batch.append(item)
    return False


def decode(batch: Sequence[Delivery]) -> tuple[list[Decoded], list[tuple[Delivery, Reject]]]:
    """Split deliveries into events and what is no event of ours (dead-lettered at once)."""
    events: list[Decoded] = []
    invalid: list[tuple[Delivery, Reject]] = []
    for message in batch:
        try:
            events.append((message, Event.from_body(message.body)))
        except InvalidEvent as exc:
            invalid.append((message, Reject(f"not a valid event: {exc}")))
    return events, invalid


def applied_log(consumer: str, events: Sequence[Event]) -> None:
    """Each applied event's id with its trace id, at DEBUG."""
    if log.isEnabledFor(logging.DEBUG):
        for event in events:
            ids = {"event_id": event.id, "trace_id": event.trace_id}
            log.debug("applied", extra={"consumer": consumer, **ids})


class Worker:
    """One consumer: `run` until the stop event is set, whatever the broker does meanwhile."""

    def __init__(
        self,
        name: str,
        settings: ConsumerSettings,
        amqp: AmqpSettings,
        handler: Handlers,
        state: ConsumerState | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.name = name
        self.state = state or ConsumerState(name)
        self._settings = settings
        self._amqp = amqp
        self._handler = handler
        self.count_interval_s = QUEUE_COUNT_INTERVAL_S
        self._tracer = tracer

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, consume, and reconnect with backoff until `stop` is set."""
        await reconnecting(
            self._amqp.urls,
            functools.partial(self._session, stop=stop),
            self._amqp.reconnect_max_s,
            stop=stop,
            fatal=(TopologyError,),
            on_failure=self._failed,
            on_reconnect=self._reconnected,
            log_extra={"consumer": self.name},
        )

    def _failed(self, exc: Exception) -> None:
        # The broker redelivers whatever was in hand: noted, and the loop starts over.
        self.state.last_error = describe(exc)

    def _reconnected(self) -> None:
        self.state.reconnects += 1

    def _note_failure(self, message: str, url: str, exc: BaseException) -> None:
        self.state.last_error = describe(exc)
        log.warning(
            message, extra={"consumer": self.name, "url": redact(url), "error": describe(exc)}
        )

    async def _session(self, url: str, stop: asyncio.Event) -> None:
        timeout_s = self._amqp.publish_timeout_s
        connection = await aio_pika.connect(
            url, timeout=timeout_s, heartbeat=self._amqp.heartbeat_s
        )
        # Confirms and returns: a retry or dead-letter copy counts once the broker holds it.
        async with (
            connection,
            connection.channel(publisher_confirms=True, on_return_raises=True) as channel,
        ):
            # A declaration on a minority node of a Khepri cluster (4.2+) waits ~30 s before
            # it fails: give up sooner and try the next URL.
            async with asyncio.timeout(self._amqp.declare_timeout_s):
                queue, settler = await self._prepare(channel)
            cancelled = await broker_cancel(channel)
            lost = asyncio.ensure_future(first_of(connection.closed(), channel.closed(), cancelled))
            counting = asyncio.create_task(self._count_queued(connection))
            self.state.connected = True
            try:
                await self._consume(queue, settler, stop, lost)
            finally:
                await cancel_and_wait(lost)
                await stop_task(counting)
                self.state.connected = self.state.consuming = False
        if stop.is_set():
            return
        if cancelled.done() and not cancelled.cancelled():
            # Handled as a lost channel: the next session declares the queue again (it may
            # have been deleted) and consumes it again.
            self.state.cancels += 1
            reason = ConsumerCancelled(f"the broker cancelled the consumer of {queue.name}")
            self._note_failure("consumer cancelled by the broker; reconnecting", url, reason)
        else:
            self._note_failure("amqp connection lost", url, ConnectionLost())

    async def _count_queued(self, connection: AbstractConnection) -> None:
        """Count, now and every `count_interval_s`, the messages waiting in the worker's
        queue, its dead-letter queue and `aifi.unrouted` (which only the broker sees). On
        a channel of its own: a passive declare of a missing queue closes its channel."""
        names = (contract.queue_name(self.name), contract.dead_queue_name(self.name))
        try:
            channel = await connection.channel()
            while True:
                for name in (*names, contract.UNROUTED_QUEUE):
                    channel = await self._count(channel, connection, name)
                await asyncio.sleep(self.count_interval_s)
        except BROKER_ERRORS as exc:  # the session ends too, and the next one counts again
            log.debug("queue count stopped", extra={"consumer": self.name, "error": repr(exc)})

    async def _count(
        self, channel: AbstractChannel, connection: AbstractConnection, name: str
    ) -> AbstractChannel:
        """Count `name` into the state; the channel to go on with (a new one if it is gone)."""
        try:
            declared = await channel.declare_queue(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            self.state.queued.pop(name, None)
            return await connection.channel()
        self.state.queued[name] = declared.declaration_result.message_count or 0
        return channel

    async def _prepare(self, channel: AbstractChannel) -> tuple[AbstractQueue, Settler]:
        await channel.set_qos(prefetch_count=self._settings.prefetch)
        routes = await declare(channel, self.name, self._settings)
        timeout_s = self._amqp.publish_timeout_s
        return routes.queue, Settler(self.name, self._settings, routes, self.state, timeout_s)

    async def _consume(
        self, queue: AbstractQueue, settler: Settler, stop: asyncio.Event, lost: Awaitable[None]
    ) -> None:
        """Consume until stopped (then finish what is in hand) or until the connection is lost."""
        inbox: Inbox = asyncio.Queue()
        tag = await queue.consume(functools.partial(self._receive, inbox, settler))
        self.state.consuming = True
        log.info("consuming", extra={"consumer": self.name, "queue": queue.name})
        work = asyncio.create_task(self._work(inbox, settler))
        try:
            await first_of(stop.wait(), lost, asyncio.shield(work))
            if stop.is_set() and not work.done():
                await self._finish(queue, tag, inbox, work)
            elif work.done():
                work.result()
        finally:
            # Awaited: a batch may still be settling after its connection closed.
            await cancel_and_wait(work)

    async def _receive(self, inbox: Inbox, settler: Settler, message: Delivery) -> None:
        settler.received(message)
        self.state.received += 1
        self.state.redelivered += bool(message.redelivered)
        inbox.put_nowait(message)

    async def _finish(
        self, queue: AbstractQueue, tag: str, inbox: Inbox, work: asyncio.Task[None]
    ) -> None:
        """Stop taking deliveries, then settle every one already in hand."""
        # A quorum queue may still deliver after cancel-ok; aiormq drops those (their
        # consumer tag is gone), and the broker requeues them when the channel closes:
        # never in hand, never lost.
        await queue.cancel(tag)
        self.state.consuming = False
        inbox.put_nowait(END)
        log.info("stopping: settling deliveries in hand", extra={"consumer": self.name})
        await work
        await asyncio.sleep(ACK_GRACE_S)

    async def _work(self, inbox: Inbox, settler: Settler) -> None:
        """Apply one batch at a time; what arrives while it is applied joins the next one.

        A slow commit thus grows the next batch (a group commit) rather than stalling.
        """
        size, linger_s = self._settings.prefetch, self._settings.linger_ms / 1000
        applying: asyncio.Task[None] | None = None
        try:
            while batch := await take(inbox, size, linger_s):
                if applying is not None:
                    await applying
                    _fill(batch, inbox, size)
                applying = asyncio.create_task(self._process(batch, settler))
            if applying is not None:
                await applying
        finally:
            if applying is not None:
                await cancel_and_wait(applying)

    async def _process(self, batch: Sequence[Delivery], settler: Settler) -> None:
        self.state.batches += 1
        events, invalid = decode(batch)
        await asyncio.gather(*(settler.fail(message, exc) for message, exc in invalid))
        with spans.consuming(self._tracer, self.name, events) as traced:
            if len(events) > 1 and await self._apply_many(events, settler, traced):
                return
            await asyncio.gather(*(self._apply_one(m, e, settler, traced) for m, e in events))

    async def _apply_many(
        self, events: Sequence[Decoded], settler: Settler, traced: spans.Untraced
    ) -> bool:
        """Apply the batch all or nothing; True if done (and acked), False to go one by one."""
        if self._handler.many is None:
            return False
        applied = [event for _, event in events]
        try:
            with traced.applying(applied):
                await self._call(self._handler.many(applied))
        # Handler code is foreign: any exception it raises is a failed attempt, by contract.
        except Exception as exc:
            log.warning(
                "batch failed; applying its events one by one",
                extra={"consumer": self.name, "size": len(events), "error": describe(exc)},
            )
            return False
        await settler.ack_all([message for message, _ in events])
        applied_log(self.name, applied)
        return True

    async def _apply_one(
        self, message: Delivery, event: Event, settler: Settler, traced: spans.Untraced
    ) -> None:
        try:
            with traced.applying((event,)):
                await self._call(self._handler.one(event))
        # Handler code is foreign: any exception it raises is a failed attempt, by contract.
        except Exception as exc:
            if not isinstance(exc, Reject | RetryLater):
                ids = {"event_id": event.id, "trace_id": event.trace_id}
                log.exception("handler raised", extra={"consumer": self.name, **ids})
            traced.failed(event, describe(exc))
            await settler.fail(message, exc)
        else:
            await settler.ack(message)
            applied_log(self.name, (event,))

    async def _call(self, application: Awaitable[None]) -> None:
        """Await the handler, timed, for at most `handler_timeout_s`."""
        timeout_s = self._settings.handler_timeout_s
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                with self.state.timing():
                    await application
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the handler's own
            raise HandlerTimeout(f"no result within handler_timeout_s={timeout_s:g}") from exc
