"""Trace context: W3C `traceparent`/`tracestate` in, the spans of an event's way out.

Every event carries a trace (`core.contract.TraceFields`): the webhook's own when it sent
a valid `traceparent`, else a new one. Spans are optional: a `Tracer` exists only when
tracing is configured and the OpenTelemetry SDK is installed (`core.otel` builds it);
otherwise the hot path holds `None` and tests one attribute, and OpenTelemetry is never
imported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from random import randbytes
from typing import Final, Literal, Protocol

from core.contract import (
    TRACEPARENT,
    TRACESTATE,
    TRACESTATE_MAX_CHARS,
    TRACESTATE_MAX_MEMBERS,
    TRACESTATE_MEMBER,
    TraceFields,
)
from core.settings import TracingSettings

# Any version but ff; a later version may append fields after a dash (W3C, section 3.2.4).
_TRACEPARENT: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.ASCII | re.DOTALL
)
_MEMBER: Final = re.compile(TRACESTATE_MEMBER)
_ZERO_TRACE_ID: Final = "0" * 32
_ZERO_PARENT_ID: Final = "0" * 16
OWS: Final = " \t"

SpanKind = Literal["server", "internal", "producer", "consumer"]


def parse_traceparent(value: str | None) -> str | None:
    """`value` as a version-00 `traceparent`, or None if W3C says to ignore it."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:
        return None
    # We know version 00 only, and write it: what a later version adds is not ours to pass on.
    return value if version == "00" else f"00-{trace_id}-{parent_id}-{flags}"


def parse_tracestate(values: list[str]) -> str | None:
    """The `tracestate` headers as one list, or None if any member is invalid (W3C: never
    propagate an invalid one); members past 512 characters are dropped from the end."""
    members = [m.strip(OWS) for value in values for m in value.split(",")]
    members = [m for m in members if m]
    if not members or len(members) > TRACESTATE_MAX_MEMBERS:
        return None
    if not all(_MEMBER.fullmatch(m) for m in members):
        return None
    while len(joined := ",".join(members)) > TRACESTATE_MAX_CHARS:
        members.pop()
    return joined or None


def new_trace() -> TraceFields:
    """A new trace, with a parent id standing for the gateway, which records no span.

    Random as OpenTelemetry's own ids are (`random`, reseeded in a forked process): a
    trace id needs no cryptographic strength, and `os.urandom` costs a system call.
    """
    # 16 bytes, a dash, 8 bytes: `trace-id-parent-id`, in one call (all-zero: 2**-128).
    return {TRACEPARENT: f"00-{randbytes(24).hex('-', -16)}-00"}


def incoming(traceparent: str | None, tracestate: list[str]) -> TraceFields | None:
    """The webhook's trace if its `traceparent` is valid (with its `tracestate` if valid)."""
    parent = parse_traceparent(traceparent)
    if parent is None:
        return None
    state = parse_tracestate(tracestate) if tracestate else None
    return {TRACEPARENT: parent, TRACESTATE: state} if state else {TRACEPARENT: parent}


class Span(Protocol):
    """One span under way."""

    @property
    def trace(self) -> TraceFields:
        """The span's own context, as its children's parent."""

    def fail(self, reason: str) -> None:
        """Mark the span as failed."""

    def end(self) -> None: ...


Attributes = Mapping[str, str]
NO_ATTRIBUTES: Final[Attributes] = {}
# The OpenTelemetry semantic conventions' name for the event id on a span.
EVENT_ID: Final = "messaging.message.id"


class Tracer(Protocol):
    """Starts spans; exists only while tracing is on."""

    def start(
        self, name: str, parent: TraceFields, kind: SpanKind, attributes: Attributes = ...
    ) -> Span:
        """A span under `parent` (a new trace if it is empty)."""


@contextmanager
def span(
    tracer: Tracer,
    name: str,
    parent: TraceFields,
    kind: SpanKind,
    attributes: Attributes = NO_ATTRIBUTES,
) -> Iterator[Span]:
    """A span around a block, failed by the exception that leaves it."""
    current = tracer.start(name, parent, kind, attributes)
    try:
        yield current
    except BaseException as exc:
        current.fail(type(exc).__name__)
        raise
    finally:
        current.end()


class TracingUnavailable(Exception):
    """Tracing is configured but the OpenTelemetry SDK is not installed."""


TRACES_ENDPOINT_ENV: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def endpoint(settings: TracingSettings, environ: Mapping[str, str]) -> str | None:
    """Where spans go: the setting, "" for the exporter's own environment, None for nowhere
    (tracing off; also when OTEL_SDK_DISABLED is true)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if settings.otlp_endpoint:
        return settings.otlp_endpoint
    return "" if any(environ.get(name) for name in TRACES_ENDPOINT_ENV) else None


@contextmanager
def configured(
    settings: TracingSettings, service_name: str, environ: Mapping[str, str] | None = None
) -> Iterator[Tracer | None]:
    """The process's tracer while the block runs (its spans flushed at the end), or None
    when tracing is off: OpenTelemetry is then not even imported."""
    environ = os.environ if environ is None else environ
    where = endpoint(settings, environ)
    if where is None:
        yield None
        return
    try:
        from core import otel  # the SDK's import cost, only when tracing is on
    except ImportError as exc:
        raise TracingUnavailable(
            f"tracing is configured but OpenTelemetry is missing ({exc}): "
            "install the otel extra, pip install 'aifi-gateway[otel]'"
        ) from None
    name = settings.service_name or environ.get("OTEL_SERVICE_NAME") or service_name
    spans = otel.provider(name, where)
    try:
        yield otel.tracer(spans)
    finally:
        spans.shutdown()
