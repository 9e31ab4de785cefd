"""deploy/prometheus/: the rules pass promtool's check and unit tests (every alert fires on
its fault and stays quiet without), each alert links a runbook section that exists, and
every metric and label the rules and the dashboard read is exposed by a running gateway,
worker and presence API."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from tests.support.monitoring import (
    ROOT,
    RULE_FILES,
    RULES_DIR,
    Prometheus,
    Stack,
    dashboard_queries,
    missing,
    rules,
    uses,
)

UNIT_TESTS: Final = ROOT / "tests" / "prometheus" / "alerts_test.yml"
RUNBOOK: Final = ROOT / "docs" / "runbook.md"


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "Debian's prometheus (promtool) is not installed: make test installs it"
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def test_promtool_checks_the_rules_and_the_scrape_config() -> None:
    checked = promtool("check", "rules", *RULE_FILES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(alerts())} rules found" in checked.stdout
    configured = promtool("check", "config", "prometheus.yml")
    assert configured.returncode == 0, configured.stdout + configured.stderr
    for name in RULE_FILES:
        assert f"Checking {name}" in configured.stdout


def without_annotations(path: Path) -> str:
    document = yaml.safe_load(path.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return yaml.safe_dump(document)


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    """On copies without annotations: promtool compares annotations whole, and they are
    prose (checked by the next tests)."""
    for name in RULE_FILES:
        (tmp_path / name).write_text(without_annotations(RULES_DIR / name))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    tested = promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_unit_test_that_fires_and_one_that_stays_quiet() -> None:
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in alerts():
        mine = [case for case in cases if case["alertname"] == alert["alert"]]
        assert any(case.get("exp_alerts") for case in mine), f"{alert['alert']} never fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{alert['alert']} never quiet"


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the `##` headings (lower case, spaces to dashes)."""
    headings = re.findall(r"^## (.+)$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


def test_every_alert_says_why_and_links_its_runbook_section() -> None:
    sections = anchors(RUNBOOK.read_text())
    for alert in alerts():
        notes = alert["annotations"]
        assert notes["summary"], alert["alert"]
        assert len(notes["description"]) > 80, alert["alert"]  # says why, not only what
        path, _, anchor = notes["runbook_url"].partition("#")
        assert (ROOT / path) == RUNBOOK, alert["alert"]
        assert anchor == alert["alert"].lower(), alert["alert"]
        assert anchor in sections, f"docs/runbook.md has no section {alert['alert']}"
    assert len(sections) == len(alerts())  # no section for an alert that is gone


@pytest.mark.slow
def test_every_metric_and_label_read_is_exposed(monitored: tuple[Stack, Prometheus]) -> None:
    stack, _ = monitored
    exposed = stack.exposed()
    read = [rule["expr"] for rule in rules()] + dashboard_queries()
    gaps = {expr: gap for expr in read if (gap := missing(expr, exposed))}
    assert not gaps, gaps


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        (
            'sum by (job, kind) (rate(aifi_requests_total{status=~"5.."}[5m]))',
            {"aifi_requests_total"},
            {"job", "kind", "status"},
        ),
        ("aifi_consumer_consuming == 0 or up == 0", {"aifi_consumer_consuming", "up"}, set()),
        ("job:aifi_presence_5xx:ratio5m > 0.05", set(), set()),
        (
            "histogram_quantile(0.99, sum by (le) (rate(aifi_ack_latency_seconds_bucket[1m])))",
            {"aifi_ack_latency_seconds_bucket"},
            {"le"},
        ),
    ],
)
def test_uses_finds_the_names_an_expression_reads(
    expr: str, metrics: set[str], labels: set[str]
) -> None:
    found = uses(expr)
    assert found.metrics == metrics
    assert found.labels == labels
