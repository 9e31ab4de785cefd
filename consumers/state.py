"""What a worker is doing: written by its runner and its settlement, read by its health
endpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


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
