"""One webhook, one trace (core.otel): the gateway and a worker in this process, on the test
session's broker, with the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from consumers.handler import Handlers
from consumers.runner import Worker
from core import otel
from core.contract import Event
from core.settings import AmqpSettings, TracingSettings
from core.tracing import configured
from gateway.app import PIPELINE, create_app
from tests.support.consumer import Scratch, running
from tests.support.gateway import AUTH, gateway_settings
from tests.support.waiting import eventually

TRACE_ID: Final = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID: Final = "00f067aa0ba902b7"
NAMES: Final = ("receive", "spool", "publish", "consume", "apply")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    yield exported
    exported.shutdown()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    spans = TracerProvider()
    spans.add_span_processor(SimpleSpanProcessor(exporter))
    yield spans
    spans.shutdown()


class Applied:
    """A handler keeping the events it applied."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


async def one_webhook(
    amqp_url: str,
    tmp_path: Path,
    scratch: Scratch,
    store: int,
    provider: TracerProvider,
    headers: dict[str, str],
) -> Event:
    """Post one `entered` webhook to a traced gateway; the event a traced worker applied."""
    tracer = otel.tracer(provider)
    name, consumer = scratch.consumer(f"entered.{store}")
    applied = Applied()
    worker = Worker(name, consumer, AmqpSettings(urls=(amqp_url,)), Handlers(applied), None, tracer)
    body = orjson.loads((Path(__file__).parents[1] / "examples" / "entered.json").read_bytes())
    app = create_app(gateway_settings(amqp_url, tmp_path), tracer)
    async with running(worker), TestClient(TestServer(app, host="127.0.0.1")) as client:
        await eventually(lambda: app[PIPELINE].publisher.ready, 10, "the gateway to connect")
        response = await client.post(
            "/webhooks/aifi/entered",
            data=orjson.dumps(body | {"storeId": store}),
            headers=AUTH | headers,
        )
        assert response.status == 200
        await eventually(lambda: bool(applied.events), 10, "the worker to apply the event")
    (event,) = applied.events
    return event


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    found = {span.name: span for span in spans}
    assert sorted(found) == sorted(NAMES)
    assert len(spans) == len(NAMES)
    return found


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    found: int = span.context.span_id
    return found


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def assert_one_tree(spans: dict[str, ReadableSpan], trace_id: int) -> None:
    """The five spans in `trace_id`: spool, publish and consume under receive, apply under
    consume, each of the kind its role says."""
    assert {name: s.context.trace_id for name, s in spans.items() if s.context} == dict.fromkeys(
        NAMES, trace_id
    )
    receive = span_id(spans["receive"])
    assert parent_id(spans["spool"]) == receive
    assert parent_id(spans["publish"]) == receive
    assert parent_id(spans["consume"]) == receive
    assert parent_id(spans["apply"]) == span_id(spans["consume"])
    kinds = {name: s.kind for name, s in spans.items()}
    assert kinds == {
        "receive": SpanKind.SERVER,
        "spool": SpanKind.INTERNAL,
        "publish": SpanKind.PRODUCER,
        "consume": SpanKind.CONSUMER,
        "apply": SpanKind.INTERNAL,
    }


async def test_one_webhook_is_one_trace_from_receive_to_apply(
    amqp_url: str,
    tmp_path: Path,
    scratch: Scratch,
    store: int,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "congo=t61rcWkgMzE"}
    event = await one_webhook(amqp_url, tmp_path, scratch, store, provider, headers)
    await eventually(lambda: len(exporter.get_finished_spans()) >= len(NAMES), 5, "five spans")
    spans = by_name(exporter.get_finished_spans())
    assert_one_tree(spans, int(TRACE_ID, 16))
    receive = spans["receive"]
    assert receive.parent is not None
    assert receive.parent.is_remote
    assert parent_id(receive) == int(PARENT_ID, 16)
    # The event carries the receive span as its parent, and the webhook's tracestate.
    assert event.traceparent == f"00-{TRACE_ID}-{span_id(receive):016x}-01"
    assert event.tracestate == "congo=t61rcWkgMzE"
    assert {s.attributes.get("messaging.message.id") for s in spans.values() if s.attributes} == {
        event.id
    }


async def test_a_webhook_without_a_trace_is_the_root_of_a_new_one(
    amqp_url: str,
    tmp_path: Path,
    scratch: Scratch,
    store: int,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    event = await one_webhook(amqp_url, tmp_path, scratch, store, provider, {})
    await eventually(lambda: len(exporter.get_finished_spans()) >= len(NAMES), 5, "five spans")
    spans = by_name(exporter.get_finished_spans())
    receive = spans["receive"]
    assert receive.parent is None
    assert receive.context is not None
    assert_one_tree(spans, receive.context.trace_id)
    assert event.trace_id == f"{receive.context.trace_id:032x}"


def test_tracing_is_off_without_an_endpoint() -> None:
    with configured(TracingSettings(), "aifi-test", {}) as tracer:
        assert tracer is None
    disabled = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}
    with configured(TracingSettings(), "aifi-test", disabled) as tracer:
        assert tracer is None


@pytest.mark.parametrize(
    ("settings", "environ"),
    [
        (TracingSettings(otlp_endpoint="http://127.0.0.1:9/"), {}),
        (TracingSettings(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}),
        (TracingSettings(), {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"}),
    ],
)
def test_an_endpoint_turns_it_on(settings: TracingSettings, environ: dict[str, str]) -> None:
    with configured(settings, "aifi-test", environ) as tracer:
        assert isinstance(tracer, otel.OtelTracer)
    assert otel.traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert otel.traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


async def test_spans_reach_an_otlp_endpoint_with_the_service_name() -> None:
    """The exporter as configured: OTLP/HTTP protobuf to `<endpoint>/v1/traces`, flushed
    when the block ends, to a collector stand-in on loopback."""
    received: list[tuple[str, bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((request.path, await request.read()))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString())

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    async with TestServer(app, host="127.0.0.1") as collector:
        settings = TracingSettings(otlp_endpoint=str(collector.make_url("/")))

        def traced() -> None:
            with configured(settings, "aifi-test", {}) as tracer:
                assert tracer is not None
                tracer.start("receive", {}, "server", {"messaging.message.id": "e-1"}).end()

        await asyncio.to_thread(traced)
    ((path, body),) = received
    assert path == "/v1/traces"
    request = ExportTraceServiceRequest.FromString(body)
    (resource,) = request.resource_spans
    service = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert service["service.name"] == "aifi-test"
    assert [s.name for scope in resource.scope_spans for s in scope.spans] == ["receive"]
