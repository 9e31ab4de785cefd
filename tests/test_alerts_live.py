"""The alert rules live: a gateway, a worker and the presence API on a RabbitMQ node of
this test's own, Debian's Prometheus with deploy/prometheus/'s rules scraping them every
second. RabbitMQ stopped while webhooks arrive: the broker and spool alerts go to firing
in /api/v1/alerts; started again: they resolve. A worker killed: its alert fires. The
time from each fault to each alert firing is printed (`make test-alerts` shows it).

The rules' `for:` durations are the shipped ones, so this takes minutes: it runs in
`make test-alerts`, not in `make test` (marker `alerts`)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from devtools.rabbitnode import Node
from tests.support.gateway import AUTH
from tests.support.monitoring import (
    Prometheus,
    Stack,
    entered_webhook,
    post,
    prometheus_for,
)

# Four faults' worth of `for:` durations in a row, with room for a busy machine.
pytestmark = [pytest.mark.alerts, pytest.mark.slow, pytest.mark.timeout(1200)]

BROKER_ALERTS: Final = frozenset(
    {"AifiBrokerDisconnected", "AifiGatewayNotReady", "AifiSpoolGrowing", "AifiSpoolOldestEventOld"}
)
# The longest `for:` plus the time to cross a threshold (2 min of age, 100 events), with room.
FIRING_TIMEOUT_S: Final = 480.0
WEBHOOKS_PER_S: Final = 5.0


@pytest.fixture
def store() -> int:
    return random.randrange(10**6, 10**9)


@pytest.fixture
def stack(tmp_path: Path, private_node: Node, store: int) -> Iterator[Stack]:
    routes = {"bindings": [f"entered.{store}"]}
    started = Stack(tmp_path / "stack", private_node.url, "entered", routes)
    try:
        started.start()
        yield started
    finally:
        started.stop()


class Webhooks:
    """AiFi's calls arriving at a steady rate in a thread, for the block."""

    def __init__(self, url: str, store: int) -> None:
        self.url, self.body = url, entered_webhook(store)
        self.answers: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1 / WEBHOOKS_PER_S):
            status = post(self.url, self.body, AUTH)
            self.answers[status] = self.answers.get(status, 0) + 1

    def __enter__(self) -> Webhooks:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def active(prometheus: Prometheus) -> dict[str, str]:
    """Alert name -> its most advanced state ("firing" over "pending")."""
    states: dict[str, str] = {}
    for alert in prometheus.alerts():
        name = alert["labels"]["alertname"]
        if states.get(name) != "firing":
            states[name] = alert["state"]
    return states


def wait_for(
    prometheus: Prometheus, names: frozenset[str], since_s: float, firing: bool = True
) -> dict[str, float]:
    """Seconds from `since_s` until each of `names` was firing (or, `firing=False`, gone)."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + FIRING_TIMEOUT_S
    while set(seen) != names:
        assert time.monotonic() < deadline, f"waited for {names - set(seen)}: {active(prometheus)}"
        states = active(prometheus)
        for name in names - set(seen):
            if (states.get(name) == "firing") == firing and (firing or name not in states):
                seen[name] = time.monotonic() - since_s
        time.sleep(0.5)
    return seen


def quiet_start(prometheus: Prometheus) -> None:
    """Every target scraped and no alert firing: the faults below are the only ones."""
    deadline = time.monotonic() + 120
    while not (prometheus.targets_up() and "firing" not in active(prometheus).values()):
        assert time.monotonic() < deadline, active(prometheus)
        time.sleep(0.5)


def report(what: str, times: dict[str, float]) -> None:
    for name, seconds in sorted(times.items(), key=lambda item: item[1]):
        print(f"{what}: {name} after {seconds:.0f} s")


def test_broker_and_worker_faults_fire_their_alerts_and_resolve(
    tmp_path: Path, private_node: Node, stack: Stack, store: int
) -> None:
    with prometheus_for(tmp_path / "prometheus", stack) as prometheus:
        quiet_start(prometheus)
        webhooks = f"{stack.gateway.url}/webhooks/aifi/entered"
        with Webhooks(webhooks, store) as calls:
            fault_s = time.monotonic()
            private_node.stop()
            print(f"RabbitMQ stopped in {time.monotonic() - fault_s:.0f} s")
            report("broker stopped", wait_for(prometheus, BROKER_ALERTS, fault_s))
            back_s = time.monotonic()
            private_node.start(timeout_s=120)
            report("broker started", wait_for(prometheus, BROKER_ALERTS, back_s, firing=False))
        # Accepted while the broker was away: spooled, then relayed once it was back.
        assert calls.answers.get(200, 0) > 100, calls.answers
        assert set(calls.answers) == {200}, calls.answers
        worker = frozenset({"AifiWorkerNotConsuming"})
        wait_for(prometheus, worker, time.monotonic(), firing=False)
        killed_s = time.monotonic()
        stack.worker.kill()
        report("worker killed", wait_for(prometheus, worker, killed_s))
        assert "AifiTargetDown" not in active(prometheus)  # the worker's own alert, not this
