"""The OpenTelemetry side of `core.tracing`: imported only when tracing is on.

Needs the `otel` extra (opentelemetry-sdk and the OTLP exporter).
"""

from __future__ import annotations

from typing import Final

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from core.contract import TRACEPARENT, TRACESTATE, TraceFields
from core.tracing import NO_ATTRIBUTES, Attributes, Span, SpanKind

KINDS: Final = {
    "server": trace.SpanKind.SERVER,
    "internal": trace.SpanKind.INTERNAL,
    "producer": trace.SpanKind.PRODUCER,
    "consumer": trace.SpanKind.CONSUMER,
}
_PROPAGATOR: Final = TraceContextTextMapPropagator()
INSTRUMENTATION: Final = "aifi-gateway"


class OtelSpan:
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    @property
    def trace(self) -> TraceFields:
        context = self._span.get_span_context()
        ids = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        state = context.trace_state.to_header()
        return {TRACEPARENT: ids, TRACESTATE: state} if state else {TRACEPARENT: ids}

    def fail(self, reason: str) -> None:
        self._span.set_status(trace.Status(trace.StatusCode.ERROR, reason))

    def end(self) -> None:
        self._span.end()


class OtelTracer:
    """A `core.tracing.Tracer` over an OpenTelemetry tracer."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start(
        self,
        name: str,
        parent: TraceFields,
        kind: SpanKind,
        attributes: Attributes = NO_ATTRIBUTES,
    ) -> Span:
        # An empty parent (no valid traceparent came) makes a root span: a new trace.
        context = _PROPAGATOR.extract(parent)
        started = self._tracer.start_span(
            name, context=context, kind=KINDS[kind], attributes=attributes
        )
        return OtelSpan(started)


def provider(service_name: str, endpoint: str) -> TracerProvider:
    """Spans batched to the OTLP/HTTP `endpoint` (the exporter's environment when empty)."""
    resource = Resource.create({SERVICE_NAME: service_name} if service_name else {})
    exporter = OTLPSpanExporter(endpoint=traces_url(endpoint) if endpoint else None)
    spans = TracerProvider(resource=resource)
    spans.add_span_processor(BatchSpanProcessor(exporter))
    return spans


def traces_url(endpoint: str) -> str:
    """As the exporter treats OTEL_EXPORTER_OTLP_ENDPOINT: the base URL of the signals."""
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint.rstrip('/')}/v1/traces"


def tracer(spans: TracerProvider) -> OtelTracer:
    return OtelTracer(spans.get_tracer(INSTRUMENTATION))
