"""Monitoring for a test: the names the rules and the dashboard use, Debian's Prometheus on
a free loopback port scraping the test's own processes, and those processes (a gateway, a
worker and the presence API), each a process group of its own, stopped however the test
ends."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from prometheus_client.parser import text_string_to_metric_families

from devtools.rabbitnode import free_port
from devtools.stack import BIN, CONSUMER_COMMAND, PRESENCE_COMMAND
from tests.support.gateway import AUTH, CONFIG, gateway_env
from tests.support.processes import GatewayProcess, kill_group

ROOT: Final = Path(__file__).resolve().parents[2]
RULES_DIR: Final = ROOT / "deploy" / "prometheus"
RULE_FILES: Final = ("recording.yml", "alerts.yml")
DASHBOARD: Final = ROOT / "deploy" / "grafana" / "aifi.json"
PRESENCE_TOKEN: Final = "presence-token-7d1c"
# Labels Prometheus itself puts on every series, and a histogram's bucket bound.
TARGET_LABELS: Final = frozenset({"job", "instance", "le"})
PROMQL_WORDS: Final = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan"}
)
STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"')
MATCHERS: Final = re.compile(r"\{([^}]*)\}")
GROUPING: Final = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
RANGE: Final = re.compile(r"\[[^\]]*\]")
NAME: Final = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def rules() -> list[dict[str, Any]]:
    """Every rule, recording and alerting, of deploy/prometheus/."""
    found = []
    for name in RULE_FILES:
        for group in yaml.safe_load((RULES_DIR / name).read_text())["groups"]:
            found.extend(group["rules"])
    return found


def dashboard_queries(path: Path = DASHBOARD) -> list[str]:
    """The PromQL of every panel of the dashboard."""
    panels = json.loads(path.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


@dataclass(frozen=True)
class Uses:
    """The metric names and label names one PromQL expression reads."""

    metrics: frozenset[str]
    labels: frozenset[str]


def uses(expr: str) -> Uses:
    """What `expr` reads; recorded series (names with a colon) are left out: the rule
    that records them is checked instead."""
    text = STRING.sub('""', expr)
    labels = {m for inner in MATCHERS.findall(text) for m in re.findall(r"(\w+)\s*[=!]", inner)}
    text = MATCHERS.sub(" ", text)
    labels |= {n.strip() for inner in GROUPING.findall(text) for n in inner.split(",")}
    text = RANGE.sub(" ", GROUPING.sub(" ", text))
    metrics = set()
    for match in NAME.finditer(text):
        rest = text[match.end() :].lstrip()
        word = match.group()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS or ":" in word:
            continue
        if match.start() and text[match.start() - 1].isdigit():
            continue  # a number's suffix (1e3), not a name
        metrics.add(word)
    return Uses(frozenset(metrics), frozenset(labels - {""}))


Exposed = dict[str, set[str]]  # sample name -> label names seen on it


def scrape(url: str) -> Exposed:
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    exposed: Exposed = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exposed.setdefault(sample.name, set()).update(sample.labels)
    return exposed


def missing(expr: str, exposed: Exposed) -> list[str]:
    """What `expr` reads that no scraped process exposes: metric names, and labels found on
    none of the metrics it reads (`up` is Prometheus's own)."""
    used = uses(expr)
    gaps = [f"metric {m}" for m in sorted(used.metrics - {"up"}) if m not in exposed]
    carried = set(TARGET_LABELS).union(*(exposed.get(m, set()) for m in used.metrics))
    return gaps + [f"label {label}" for label in sorted(used.labels - carried)]


@dataclass
class Stack:
    """A gateway, one ledger worker and the presence API, as processes, on free ports."""

    base: Path
    amqp_url: str
    consumer: str
    consumer_settings: dict[str, Any]
    gateway: GatewayProcess = field(init=False)
    worker: GatewayProcess = field(init=False)
    presence: GatewayProcess = field(init=False)

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        ledger = str(self.base / "ledger.sqlite3")
        env = gateway_env(self.amqp_url, self.base / "spool")
        self.gateway = GatewayProcess(free_port(), env, self.base / "gateway.log")
        self.worker = self._worker(ledger)
        presence_port = free_port()
        presence_env = {
            "AIFI_CONFIG": str(CONFIG),
            "AIFI_LEDGER_DB": ledger,
            "AIFI_PRESENCE_TOKENS": f"downstream={PRESENCE_TOKEN}",
            "AIFI_PRESENCE_PORT": str(presence_port),
            "AIFI_LOG_LEVEL": "WARNING",
        }
        argv = (str(BIN / PRESENCE_COMMAND[0]),)
        self.presence = GatewayProcess(
            presence_port, presence_env, self.base / "presence.log", argv
        )

    def _worker(self, ledger: str) -> GatewayProcess:
        port = free_port()
        config = self.base / "consumers.yaml"
        settings = self.consumer_settings | {"health_port": port}
        config.write_text(yaml.safe_dump({"consumers": {self.consumer: settings}}))
        env = {
            "AIFI_CONFIG": str(config),
            "AIFI_AMQP_URL": self.amqp_url,
            "AIFI_LEDGER_DB": ledger,
            "AIFI_LOG_LEVEL": "WARNING",
        }
        argv = (str(BIN / CONSUMER_COMMAND[0]), self.consumer)
        return GatewayProcess(port, env, self.base / "worker.log", argv)

    @property
    def processes(self) -> dict[str, GatewayProcess]:
        return {
            "aifi-gateway": self.gateway,
            "aifi-consumer": self.worker,
            "aifi-presence": self.presence,
        }

    def start(self, timeout_s: float = 60.0) -> None:
        """The worker first (it creates the ledger the presence API reads)."""
        for process in (self.worker, self.presence, self.gateway):
            process.start(timeout_s)

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()

    def exposed(self) -> Exposed:
        """What the three expose now, merged."""
        merged: Exposed = {}
        for process in self.processes.values():
            for name, labels in scrape(f"{process.url}/metrics").items():
                merged.setdefault(name, set()).update(labels)
        return merged


class Prometheus:
    """Debian's `prometheus` with the project's rules, scraping `targets` (job -> host:port)
    every `interval_s`, on a free loopback port; `stop` kills its process group."""

    def __init__(self, base: Path, targets: dict[str, list[str]], interval_s: float = 1.0):
        self.base, self.targets, self.interval_s = base, targets, interval_s
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        every = f"{int(self.interval_s * 1000)}ms"
        return {
            "global": {"scrape_interval": every, "evaluation_interval": every},
            "rule_files": [str(RULES_DIR / name) for name in RULE_FILES],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": hosts}]}
                for job, hosts in self.targets.items()
            ],
        }

    def start(self, timeout_s: float = 60.0) -> None:
        binary = shutil.which("prometheus")
        assert binary, "Debian's prometheus is not installed: make test installs it"
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.base / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with (self.base / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, process_group=0
            )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            assert self.process.poll() is None, self.log()
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1),
            ):
                return
            time.sleep(0.2)
        raise TimeoutError(f"prometheus did not become ready: {self.log()}")

    def log(self) -> str:
        return (self.base / "prometheus.log").read_text()[-2000:]

    def api(self, path: str, **params: str) -> Any:
        """The `data` of an answer of the HTTP API; a failed query raises, saying why."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{params}: {exc.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return found

    def targets_up(self) -> bool:
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def stop(self) -> None:
        if self.process is not None:
            kill_group(self.process.pid)
            self.process.wait(timeout=10)
            self.process = None


@contextlib.contextmanager
def prometheus_for(base: Path, stack: Stack, interval_s: float = 1.0) -> Iterator[Prometheus]:
    """Prometheus scraping `stack`'s processes, as jobs named as in the shipped config."""
    targets = {job: [f"127.0.0.1:{p.port}"] for job, p in stack.processes.items()}
    prometheus = Prometheus(base, targets, interval_s)
    prometheus.start()
    try:
        yield prometheus
    finally:
        prometheus.stop()


def entered_webhook(store: int, examples: Path = ROOT / "examples") -> bytes:
    """AiFi's example `entered` call, for `store` (routed as `entered.<store>`)."""
    body = json.loads((examples / "entered.json").read_text())
    return json.dumps(body | {"storeId": store}).encode()


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    """POST (or GET when `body` is empty) and the answer's status; 0 when none came."""
    request = urllib.request.Request(url, data=body or None, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def traffic(stack: Stack, store: int, count: int = 3) -> None:
    """Webhooks (valid and invalid) and presence reads, so that every labelled series the
    rules and the dashboard read has a sample."""
    entered = f"{stack.gateway.url}/webhooks/aifi/entered"
    for _ in range(count):
        assert post(entered, entered_webhook(store), AUTH) == 200
    assert post(entered, b"{not json", AUTH) == 400
    bearer = {"Authorization": f"Bearer {PRESENCE_TOKEN}"}
    post(f"{stack.presence.url}/stores", b"", bearer)
