"""The Grafana dashboard as code (Grafana's foundation SDK), written to deploy/grafana/.

    python -m devtools.dashboard            # write deploy/grafana/aifi.json
    python -m devtools.dashboard --check    # exit 1 if the committed file differs

Every panel reads metrics the gateway, the workers and the presence API expose;
tests/test_alerts.py checks they exist, and tests/test_dashboard.py runs each query.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUTPUT: Final = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "aifi.json"
DATASOURCE: Final = DataSourceRef(type_val="prometheus", uid="${datasource}")
WIDTH: Final = 12  # two panels a row (Grafana's grid is 24 wide)


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""


def q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


GATEWAY: Final = (
    Panel(
        "Webhook answers by status",
        "reqps",
        (q("sum by (kind, status) (rate(aifi_requests_total[5m]))", "{{kind}} {{status}}"),),
        "What AiFi's calls get; anything but 200 is retried by AiFi or quarantined.",
    ),
    Panel(
        "Ack latency (p50, p99)",
        "s",
        (
            q(
                "histogram_quantile(0.5, sum by (kind, le) "
                "(rate(aifi_ack_latency_seconds_bucket[5m])))",
                "p50 {{kind}}",
            ),
            q(
                "histogram_quantile(0.99, sum by (kind, le) "
                "(rate(aifi_ack_latency_seconds_bucket[5m])))",
                "p99 {{kind}}",
            ),
        ),
        "Request to answer: the 200 comes once the event is safe (spooled or confirmed).",
    ),
    Panel(
        "Spool depth",
        "short",
        (q("aifi_spool_depth", "{{instance}} events"),),
        "Events accepted and not yet confirmed by RabbitMQ; near 0 when all is well.",
    ),
    Panel(
        "Spool oldest event age and size",
        "s",
        (
            q("aifi_spool_oldest_age_seconds", "{{instance}} oldest age"),
            q("aifi_spool_bytes / 1e6", "{{instance}} MB on disk"),
        ),
        "How late the oldest unconfirmed event is; the bytes count toward spool.max_bytes.",
    ),
    Panel(
        "Relay publishes and confirms",
        "ops",
        (
            q(
                "sum by (instance) (rate(aifi_relay_publishes_total[5m]))",
                "{{instance}} publish attempts",
            ),
            q("sum by (instance) (rate(aifi_relay_confirms_total[5m]))", "{{instance}} confirmed"),
        ),
        "Publishes without confirms: a blocked broker (see AifiRelayStalled).",
    ),
    Panel(
        "Broker connection, readiness, returns and reconnects",
        "short",
        (
            q("aifi_broker_connected", "{{instance}} connected"),
            q("aifi_gateway_ready", "{{instance}} ready"),
            q("increase(aifi_broker_returns_total[5m])", "{{instance}} returned (5m)"),
            q("increase(aifi_broker_reconnects_total[5m])", "{{instance}} reconnects (5m)"),
        ),
    ),
)
WORKERS: Final = (
    Panel(
        "Worker messages: received, acked, retried, dead-lettered",
        "ops",
        (
            q(
                "sum by (consumer, outcome) (rate(aifi_consumer_messages_total"
                '{outcome=~"received|acked|retried|dead_lettered"}[5m]))',
                "{{consumer}} {{outcome}}",
            ),
        ),
    ),
    Panel(
        "Handler time per call",
        "s",
        (
            q(
                "sum by (consumer) (rate(aifi_consumer_handler_seconds_sum[5m])) "
                "/ sum by (consumer) (rate(aifi_consumer_handler_seconds_count[5m]))",
                "{{consumer}}",
            ),
        ),
        "One call handles a batch of events (up to prefetch).",
    ),
    Panel(
        "Messages waiting by queue",
        "short",
        (q("max by (queue) (aifi_consumer_queue_messages)", "{{queue}}"),),
        "Each worker's queue (its backlog), its dead letters, and aifi.unrouted.",
    ),
    Panel(
        "Worker state",
        "short",
        (
            q("aifi_consumer_consuming", "{{consumer}} consuming"),
            q("aifi_consumer_waiting", "{{consumer}} waiting for its ledger"),
            q("increase(aifi_consumer_cancels_total[5m])", "{{consumer}} cancelled (5m)"),
        ),
    ),
)
PRESENCE: Final = (
    Panel(
        "Ledger occupancy by store",
        "short",
        (q("max by (store) (aifi_ledger_occupancy)", "store {{store}}"),),
        "People inside each store, as the presence API reads the ledger.",
    ),
    Panel(
        "Presence API latency (p99) and answers",
        "s",
        (
            q(
                "histogram_quantile(0.99, sum by (route, le) "
                "(rate(aifi_presence_request_duration_seconds_bucket[5m])))",
                "p99 {{route}}",
            ),
            q(
                "sum by (status) (rate(aifi_presence_requests_total[5m]))",
                "{{status}} answers/s",
            ),
        ),
    ),
)
ROWS: Final = (("Gateway", GATEWAY), ("Workers", WORKERS), ("Presence", PRESENCE))


def panel(spec: Panel) -> timeseries.Panel:
    built = (
        timeseries.Panel()
        .title(spec.title)
        .description(spec.description)
        .unit(spec.unit)
        .datasource(DATASOURCE)
        .height(8)
        .span(WIDTH)
    )
    for ref, query in zip("ABCD", spec.queries, strict=False):
        built = built.with_target(
            prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref)
        )
    return built


def build() -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard("AiFi webhook gateway")
        .uid("aifi-gateway")
        .description("Gateway, workers and presence API; alerts in deploy/prometheus/.")
        .tags(["aifi"])
        .refresh("30s")
        .time("now-3h", "now")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
    )
    for title, panels in ROWS:
        board = board.with_row(dashboard.Row(title))
        for spec in panels:
            board = board.with_panel(panel(spec))
    return board


def render() -> str:
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.dashboard", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        same = OUTPUT.exists() and OUTPUT.read_text() == text
        if not same:
            print(f"{OUTPUT} is out of date: run python -m devtools.dashboard", file=sys.stderr)
        return 0 if same else 1
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
