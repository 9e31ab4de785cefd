"""deploy/grafana/aifi.json is what devtools.dashboard generates, and each of its panels'
queries parses and returns series in a Prometheus scraping a running stack."""

from __future__ import annotations

import json

import pytest

from devtools import dashboard
from tests.support.monitoring import DASHBOARD, Prometheus, Stack, dashboard_queries


def test_the_committed_dashboard_is_what_the_code_generates() -> None:
    assert DASHBOARD.read_text() == dashboard.render(), "run python -m devtools.dashboard"
    assert dashboard.main(["--check"]) == 0


def test_it_shows_what_an_operator_needs() -> None:
    titles = [panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]]
    for wanted in ("status", "Ack latency", "Spool depth", "age", "confirms", "Broker"):
        assert any(wanted in title for title in titles), wanted
    for wanted in ("dead-lettered", "Handler time", "occupancy by store", "Presence API"):
        assert any(wanted in title for title in titles), wanted


@pytest.mark.slow
def test_every_query_parses_and_returns_series(monitored: tuple[Stack, Prometheus]) -> None:
    _, prometheus = monitored
    queries = dashboard_queries()
    assert len(queries) >= 15
    empty = [expr for expr in queries if not prometheus.query(expr)]
    assert not empty, empty
