"""Prometheus metrics of the presence API, in a registry of its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from core.http import LATENCY_BUCKETS_S
from ledger.effects import Row

# The label of a request no route matched: its path would make a label per URL tried.
UNMATCHED: Final = "unmatched"


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    occupancy: Gauge

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        requests = Counter(
            "aifi_presence_requests",
            "requests by route and status",
            ["route", "status"],
            registry=registry,
        )
        latency = Histogram(
            "aifi_presence_request_duration_seconds",
            "time from request to answer, by route",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        occupancy = Gauge(
            "aifi_ledger_occupancy",
            "people inside each store, as the ledger says at scrape time",
            ["store"],
            registry=registry,
        )
        return cls(registry, requests, latency, occupancy)

    def observe(self, route: str, status: int, elapsed_s: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(elapsed_s)

    def exposition(self, occupancy: list[Row] | None) -> bytes:
        """The metrics, with the ledger's `occupancy` rows (None: it cannot be read now,
        and the stores are left out rather than shown as empty)."""
        self.occupancy.clear()
        for row in occupancy or ():
            store = "none" if row["storeId"] is None else str(row["storeId"])
            self.occupancy.labels(store).set(row["occupancy"])
        return generate_latest(self.registry)
