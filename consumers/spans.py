"""The worker's spans: `consume` for each event from its decoding to its settlement, and
`apply` for each handler call, both in the event's trace (its `traceparent`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Final

from aio_pika.abc import AbstractIncomingMessage

from core.contract import TRACEPARENT, TRACESTATE, Event, TraceFields
from core.tracing import EVENT_ID, Span, Tracer

Decoded = tuple[AbstractIncomingMessage, Event]


def parent(event: Event) -> TraceFields:
    """The event's trace; empty for an event written without one (a new trace)."""
    if event.traceparent is None:
        return {}
    if event.tracestate is None:
        return {TRACEPARENT: event.traceparent}
    return {TRACEPARENT: event.traceparent, TRACESTATE: event.tracestate}


class Untraced:
    """Tracing off: no span."""

    @contextlib.contextmanager
    def applying(self, events: Sequence[Event]) -> Iterator[None]:
        yield

    def failed(self, event: Event, reason: str) -> None:
        pass


UNTRACED: Final = Untraced()


class Consumed(Untraced):
    """The `consume` spans of one batch's events."""

    def __init__(self, tracer: Tracer, consumer: str, events: Sequence[Decoded]) -> None:
        self._tracer = tracer
        self._attributes = {"messaging.consumer.group.name": consumer}
        # By object: a batch may hold two deliveries of one event id.
        self._spans: dict[int, Span] = {
            id(event): tracer.start("consume", parent(event), "consumer", self.of(event))
            for _, event in events
        }

    def of(self, event: Event) -> dict[str, str]:
        return {**self._attributes, EVENT_ID: event.id}

    @contextlib.contextmanager
    def applying(self, events: Sequence[Event]) -> Iterator[None]:
        """An `apply` span for each of `events` around one handler call."""
        tracer, spans = self._tracer, self._spans
        applies = [
            tracer.start("apply", spans[id(e)].trace, "internal", self.of(e)) for e in events
        ]
        try:
            yield
        except BaseException as exc:
            for apply in applies:
                apply.fail(type(exc).__name__)
            raise
        finally:
            for apply in applies:
                apply.end()

    def failed(self, event: Event, reason: str) -> None:
        self._spans[id(event)].fail(reason)

    def end(self) -> None:
        for consume in self._spans.values():
            consume.end()


@contextlib.contextmanager
def consuming(
    tracer: Tracer | None, consumer: str, events: Sequence[Decoded]
) -> Iterator[Untraced]:
    """The spans of a batch while it is applied and settled (nothing when `tracer` is None)."""
    if tracer is None:
        yield UNTRACED
        return
    consumed = Consumed(tracer, consumer, events)
    try:
        yield consumed
    finally:
        consumed.end()
