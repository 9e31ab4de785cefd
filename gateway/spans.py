"""The `publish` span of each event the publisher writes: from its write to its confirm."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from core.contract import INVALID_KIND_HEADER, TRACEPARENT, Outbound, body_traceparent
from core.tracing import EVENT_ID, Span, Tracer

if TYPE_CHECKING:
    from gateway.publisher import Outcomes, Settle

T = TypeVar("T")
Traced = tuple[T, Span | None]


def publishing(
    tracer: Tracer, messages: Sequence[tuple[Outbound, T]], settle: Settle[T]
) -> tuple[list[tuple[Outbound, Traced[T]]], Settle[Traced[T]]]:
    """`messages` and `settle` of a write, each message in a `publish` span ended by its
    outcome. A message without a traceparent (a quarantined request) gets none."""
    traced = [(outbound, (token, started(tracer, outbound))) for outbound, token in messages]

    def settled(outcomes: Outcomes[Traced[T]]) -> None:
        for (_, publish), error in outcomes:
            if publish is not None:
                ended(publish, error)
        settle([(token, error) for (token, _), error in outcomes])

    return traced, settled


def started(tracer: Tracer, outbound: Outbound) -> Span | None:
    # Read from the body: tracing on pays for the parse, tracing off for no header.
    if INVALID_KIND_HEADER in outbound.headers:
        return None  # a quarantined request: no event, and its body is not ours
    parent = body_traceparent(outbound.body)
    if parent is None:
        return None  # an event spooled by a release without trace context
    attributes = {EVENT_ID: outbound.message_id, "messaging.destination.name": outbound.routing_key}
    return tracer.start("publish", {TRACEPARENT: parent}, "producer", attributes)


def ended(publish: Span, error: Exception | None) -> None:
    if error is not None:
        publish.fail(str(error))
    publish.end()


def abandoned(messages: Sequence[tuple[Outbound, Traced[T]]], error: Exception) -> None:
    """End the spans of a write that raised: none of its messages was written."""
    for _, (_, publish) in messages:
        if publish is not None:
            ended(publish, error)
