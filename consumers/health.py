"""What a worker is doing, and a tiny HTTP endpoint that reports it: `GET /healthz`
(JSON) and `GET /metrics` (Prometheus text)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

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

from core import http


class HealthPortError(Exception):
    """The health endpoint's address cannot be bound (in use, or not this host's)."""


@dataclass
class ConsumerState:
    """Written by the worker, read by the endpoint; one instance per worker."""

    consumer: str
    # What the worker does before it can consume (its ledger being locked, say); None after.
    starting: str | None = None
    # What a consuming worker waits for (its ledger's database, say); None when nothing.
    waiting: str | None = None
    connected: bool = False
    consuming: bool = False
    reconnects: int = 0
    cancels: int = 0  # consumers the broker cancelled (queue deleted, consumer timeout)
    batches: int = 0
    received: int = 0
    redelivered: int = 0  # deliveries the broker had handed out before: crash recovery
    acked: int = 0
    retried: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    handler_calls: int = 0
    handler_seconds: float = 0.0
    last_error: str | None = None
    # Messages waiting in its queue, its dead-letter queue and aifi.unrouted, by queue name.
    queued: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Count one handler call (of one event or of a batch) and its duration."""
        started_s = time.perf_counter()
        try:
            yield
        finally:
            self.handler_calls += 1
            self.handler_seconds += time.perf_counter() - started_s

    def snapshot(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
