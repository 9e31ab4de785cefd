"""A tiny HTTP endpoint that reports what a worker is doing (its `ConsumerState`):
`GET /healthz` (JSON) and `GET /metrics` (Prometheus text)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from consumers.state import ConsumerState
from core import http


class HealthPortError(Exception):
    """The health endpoint's address cannot be bound (in use, or not this host's)."""


def create_app(state: ConsumerState) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        # 503 while not consuming, so that an orchestrator's probe sees a worker that waits
        # for the broker as unhealthy rather than as fine.
        return web.Response(
            body=orjson.dumps(state.snapshot()),
            status=200 if state.consuming and state.waiting is None else 503,
            content_type="application/json",
        )

    registry = CollectorRegistry()
    registry.register(StateCollector(state))

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return http.exposition(body)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


OUTCOMES = ("received", "redelivered", "acked", "retried", "dead_lettered", "requeued")


class StateCollector(Collector):
    """The worker's counters as Prometheus metrics, read at scrape time."""

    def __init__(self, state: ConsumerState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state, labels = self._state, [self._state.consumer]
        messages = CounterMetricFamily(
            "aifi_consumer_messages", "messages by outcome", labels=["consumer", "outcome"]
        )
        for outcome in OUTCOMES:
            messages.add_metric([state.consumer, outcome], getattr(state, outcome))
        yield messages
        for name, doc, value in (
            ("batches", "batches taken", state.batches),
            ("reconnects", "AMQP reconnections", state.reconnects),
            ("cancels", "consumers cancelled by the broker", state.cancels),
        ):
            yield counter(f"aifi_consumer_{name}", doc, labels, value)
        for name, doc, flag in (
            ("connected", "1 while connected to the broker", state.connected),
            ("consuming", "1 while consuming its queue", state.consuming),
            # The ledger: being opened (`starting`), or its database away mid-stream.
            ("starting", "1 until it can consume (its ledger being opened)", bool(state.starting)),
            (
                "waiting",
                "1 while its handler waits (the ledger's database away)",
                bool(state.waiting),
            ),
        ):
            yield gauge(f"aifi_consumer_{name}", doc, labels, float(flag))
        queued = GaugeMetricFamily(
            "aifi_consumer_queue_messages",
            "messages waiting in a queue it reads (its own, its dead letters, aifi.unrouted)",
            labels=["consumer", "queue"],
        )
        for queue, count in sorted(state.queued.items()):
            queued.add_metric([state.consumer, queue], count)
        yield queued
        latency = SummaryMetricFamily(
            "aifi_consumer_handler_seconds", "handler calls and their time", labels=["consumer"]
        )
        latency.add_metric(labels, count_value=state.handler_calls, sum_value=state.handler_seconds)
        yield latency


def counter(name: str, doc: str, labels: list[str], value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["consumer"])
    family.add_metric(labels, value)
    return family


def gauge(name: str, doc: str, labels: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["consumer"])
    family.add_metric(labels, value)
    return family


@contextlib.asynccontextmanager
async def serving(state: ConsumerState, host: str, port: int) -> AsyncIterator[None]:
    """Serve `/healthz` on `host:port` for the duration of the block; port 0 serves nothing."""
    if not port:
        yield
        return
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            # Said as what it is: an OSError would otherwise read as a broker failure.
            raise HealthPortError(
                f"cannot serve /healthz on {host}:{port}: {exc.strerror}"
            ) from exc
        yield
    finally:
        await runner.cleanup()
