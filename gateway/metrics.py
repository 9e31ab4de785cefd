"""Prometheus metrics of one gateway process, in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.http import LATENCY_BUCKETS_S
from gateway.pipeline import Status

Snapshot = Callable[[], Status]
Observer = Callable[[int, float], None]


class PipelineCollector(Collector):
    """Reads the spool, relay and publisher state at scrape time instead of on every event."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        state = self._snapshot()
        spool = state.spool
        gauges = {
            "aifi_spool_depth": ("events spooled and not yet confirmed", spool.depth),
            "aifi_spool_bytes": ("bytes of spool segment files", spool.bytes),
            "aifi_spool_oldest_age_seconds": (
                "age of the oldest unconfirmed event",
                spool.oldest_age_s or 0.0,
            ),
            "aifi_broker_connected": (
                "1 when the AMQP channel is open",
                int(state.broker_connected),
            ),
            "aifi_gateway_ready": ("1 when /readyz answers 200", int(state.ready)),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        counters = {
            "aifi_relay_publishes": ("publish attempts by the relay", state.publishes),
            "aifi_relay_confirms": ("publishes confirmed by the broker", state.confirms),
            "aifi_broker_returns": ("publishes the broker returned unroutable", state.returns),
            "aifi_broker_reconnects": ("AMQP reconnections", state.reconnects),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    ack_latency: Histogram
    quarantined: Counter
    # The children of `requests` by (kind, status): `.labels()` looks them up under a lock.
    _counted: dict[tuple[str, int], Counter] = field(default_factory=dict)

    @classmethod
    def create(cls, snapshot: Snapshot) -> Metrics:
        registry = CollectorRegistry()
        registry.register(PipelineCollector(snapshot))
        return cls(
            registry,
            Counter(
                "aifi_requests",
                "webhook requests by kind and status",
                ["kind", "status"],
                registry=registry,
            ),
            Histogram(
                "aifi_ack_latency_seconds",
                "time from request to answer, by kind",
                ["kind"],
                buckets=LATENCY_BUCKETS_S,
                registry=registry,
            ),
            Counter(
                "aifi_quarantined",
                "invalid requests kept under invalid.<kind>",
                ["kind"],
                registry=registry,
            ),
        )

    def observer(self, kind: str) -> Observer:
        """Counts and times the answers of one kind, its latency child looked up once."""
        latency = self.ack_latency.labels(kind)

        def observe(status: int, elapsed_s: float) -> None:
            self._counter(kind, status).inc()
            latency.observe(elapsed_s)

        return observe

    def _counter(self, kind: str, status: int) -> Counter:
        child = self._counted.get((kind, status))
        if child is None:
            child = self._counted[kind, status] = self.requests.labels(kind, str(status))
        return child

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
