"""The figures of a run: the table, the ratios against the issue's targets, JSON and a chart."""

from __future__ import annotations

import datetime
import operator
import os
import platform
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from bench.load import LoadResult

MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class ServerFigures:
    name: str
    label: str
    load: LoadResult
    peak_rss_bytes: int | None
    events: int | None  # counted in RabbitMQ; None for a server that publishes nothing
    e2e_events_per_s: float | None  # events / (last event confirmed - first request)
    drain_s: float | None  # from the end of the load to the last event in RabbitMQ
    cpu_s: float | None  # the server's CPU from the first request to the last event counted

    def metrics(self) -> dict[str, float | None]:
        rss = self.peak_rss_bytes
        cpu_s = self.cpu_s
        cpu_us = divide(cpu_s * 1e6 if cpu_s is not None else None, self.load.acknowledged)
        return {
            "rps": self.load.rps,
            "p50_ms": self.load.p50_ms,
            "p99_ms": self.load.p99_ms,
            "non_2xx": float(self.load.non_2xx),
            "peak_rss_mib": rss / MIB if rss is not None else None,
            "e2e_events_per_s": self.e2e_events_per_s,
            "cpu_us_per_request": cpu_us,
        }

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"metrics": self.metrics()}


Compare = Callable[[float, float], bool]
Symbol = Literal[">=", "<="]
Operand = tuple[str, str]  # (server name, metric name)


@dataclass(frozen=True)
class RatioSpec:
    title: str
    numerator: Operand
    denominator: Operand
    symbol: Symbol
    target: float


COMPARE: Final[Mapping[Symbol, Compare]] = {">=": operator.ge, "<=": operator.le}
RATIOS: Final = (
    RatioSpec("gateway rps / bare rps", ("gateway", "rps"), ("bare", "rps"), ">=", 0.5),
    RatioSpec(
        "gateway e2e / naive e2e",
        ("gateway", "e2e_events_per_s"),
        ("naive", "e2e_events_per_s"),
        ">=",
        2.5,
    ),
    RatioSpec("gateway p99 / naive p99", ("gateway", "p99_ms"), ("naive", "p99_ms"), "<=", 0.25),
    RatioSpec(
        "gateway peak RSS / bare peak RSS",
        ("gateway", "peak_rss_mib"),
        ("bare", "peak_rss_mib"),
        "<=",
        1.5,
    ),
    RatioSpec(
        "fsync always rps / fsync never rps",
        ("gateway", "rps"),
        ("gateway-fsync-never", "rps"),
        ">=",
        0.8,
    ),
)
# Its operands come from the consumer figures (see `consumer_figures.consumer_pair`).
CONSUMER_RATIO: Final = RatioSpec(
    "consumer ledger / bare consumer",
    ("consumers", "ledger_msgs_per_s"),
    ("consumers", "bare_msgs_per_s"),
    ">=",
    0.6,
)


@dataclass(frozen=True)
class Ratio:
    title: str
    value: float | None  # None: a figure is missing (server not run, or failed)
    symbol: Symbol
    target: float

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        return "PASS" if COMPARE[self.symbol](self.value, self.target) else "FAIL"


def divide(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def ratios(
    figures: Mapping[str, ServerFigures], consumer_pair: tuple[float, float] | None
) -> list[Ratio]:
    def metric(operand: Operand) -> float | None:
        server, name = operand
        return figures[server].metrics()[name] if server in figures else None

    found = [
        Ratio(s.title, divide(metric(s.numerator), metric(s.denominator)), s.symbol, s.target)
        for s in RATIOS
    ]
    ledger, bare = consumer_pair or (None, None)
    spec = CONSUMER_RATIO
    return [*found, Ratio(spec.title, divide(ledger, bare), spec.symbol, spec.target)]


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def server_table(figures: Sequence[ServerFigures]) -> str:
    header = (
        f"{'server':<24} {'2xx req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
        f"{'sock err':>8} {'peak RSS MiB':>12} {'e2e ev/s':>10} {'events':>8} {'drain s':>8} "
        f"{'CPU us/req':>10}"
    )
    lines = [header, "-" * len(header)]
    for f in figures:
        m = f.metrics()
        lines.append(
            f"{f.label:<24} {fmt(m['rps']):>10} {fmt(m['p50_ms'], 2):>8} {fmt(m['p99_ms'], 2):>8} "
            f"{f.load.non_2xx:>8} {f.load.socket_errors:>8} {fmt(m['peak_rss_mib'], 1):>12} "
            f"{fmt(m['e2e_events_per_s']):>10} {fmt(f.events):>8} {fmt(f.drain_s, 2):>8} "
            f"{fmt(m['cpu_us_per_request']):>10}"
        )
    return "\n".join(lines)


def ratio_table(found: Sequence[Ratio]) -> str:
    lines = [f"{'ratio':<36} {'value':>7} {'target':>9}  verdict"]
    for r in found:
        lines.append(f"{r.title:<36} {fmt(r.value, 2):>7} {r.symbol} {r.target:<6g}  {r.verdict}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Run:
    """Everything one `python -m bench` measured, and under which conditions."""

    date: str
    command: str
    settings: Mapping[str, Any]
    machine: Mapping[str, Any]
    figures: Sequence[ServerFigures]
    failures: Sequence[str]
    consumers: Mapping[str, float] | str  # the figures, or why there are none
    ratios: Sequence[Ratio]

    def as_json(self) -> dict[str, Any]:
        return {
            "date": self.date,
            "command": self.command,
            "machine": self.machine,
            "settings": self.settings,
            "servers": {f.name: f.as_json() for f in self.figures},
            "consumers": self.consumers,
            "ratios": [
                {
                    "ratio": r.title,
                    "value": r.value,
                    "target": f"{r.symbol} {r.target:g}",
                    "verdict": r.verdict,
                }
                for r in self.ratios
            ],
            "failures": self.failures,
        }


def print_report(run: Run) -> None:
    print()
    print(server_table(run.figures))
    print()
    if isinstance(run.consumers, str):
        print(f"consumers: no figures ({run.consumers})")
    else:
        print("consumers: " + ", ".join(f"{k} {v:,.2f}" for k, v in run.consumers.items()))
    print()
    print(ratio_table(run.ratios))


def write_results(directory: Path, stem: str, run: Run) -> None:
    """`<stem>.json` and `<stem>.png` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, png_path = directory / f"{stem}.json", directory / f"{stem}.png"
    write_json(json_path, run.as_json())
    title = (
        f"{run.date}  {run.settings['connections']} connections, "
        f"{run.settings['duration_s']:g} s each  "
        f"{run.machine['cpu_model']} x{run.machine['nproc']}"
    )
    skipped = write_chart(png_path, run.figures, title)
    print()
    print(f"wrote {json_path}" + (f" (no chart: {skipped})" if skipped else f" and {png_path}"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def wrk_version() -> str | None:
    try:
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (done.stdout or done.stderr).splitlines()
    return first[0] if first else None


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version(),
    }


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    # Written aside and renamed, so an interrupted run never leaves half a result.
    partial = path.with_suffix(".json.tmp")
    partial.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    partial.replace(path)


CHART_PANELS: Final = (
    ("rps", "2xx requests/s"),
    ("p99_ms", "p99 latency (ms)"),
    ("peak_rss_mib", "peak RSS (MiB)"),
    ("e2e_events_per_s", "end-to-end events/s"),
)


def bar_label(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 10 else f"{value:.2f}"


def write_chart(path: Path, figures: Sequence[ServerFigures], title: str) -> str | None:
    """A 2x2 bar chart of the main figures; the reason it was not drawn, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: the chart only goes to a file
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[dev]')"
    names = [f.name for f in figures]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), layout="constrained")
    for ax, (key, label) in zip(axes.flat, CHART_PANELS, strict=True):
        values = [f.metrics()[key] for f in figures]
        bars = ax.bar(names, [v or 0.0 for v in values], color="#4c72b0")
        ax.bar_label(bars, labels=[bar_label(v) for v in values], fontsize=8)
        ax.margins(y=0.15)  # room for the labels above the tallest bar
        ax.set_title(label)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None
