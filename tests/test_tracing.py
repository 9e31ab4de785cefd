"""Unit tests of the trace context (core.tracing): W3C Trace Context in, the switch to spans."""

from __future__ import annotations

import subprocess
import sys
from typing import Final

import pytest

import core
from core import tracing
from core.contract import TRACESTATE_MAX_CHARS
from core.settings import TracingSettings

IDS: Final = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
VALID: Final = f"00-{IDS}-01"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (VALID, VALID),
        (f"00-{IDS}-00", f"00-{IDS}-00"),
        (f"00-{IDS}-ff", f"00-{IDS}-ff"),  # flags unknown to us are kept
        (f"01-{IDS}-01", VALID),  # a later version is read as 00, and written as 00
        (f"cc-{IDS}-09-what-the-future-adds", f"00-{IDS}-09"),
        (None, None),
        ("", None),
        (f"ff-{IDS}-01", None),
        (f"00-{IDS}-01-", None),  # version 00 is exactly 55 characters
        (f"00-{IDS}-01 ", None),
        (f"cc-{IDS}-01x", None),  # a later version's fields follow a dash
        (VALID.upper(), None),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
        (f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01", None),
        (f"00-{IDS[:-1]}-01", None),
        (f"00-{IDS}-1", None),
        (f"00_{IDS}_01", None),
        (f"00-{IDS}-0\u0661", None),  # digits are ASCII only
    ],
)
def test_parse_traceparent(value: str | None, expected: str | None) -> None:
    assert tracing.parse_traceparent(value) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["congo=t61rcWkgMzE"], "congo=t61rcWkgMzE"),
        (["congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"], "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        (["congo=1", "rojo=2"], "congo=1,rojo=2"),  # several headers are one list
        (["congo=1,,\t, rojo=2"], "congo=1,rojo=2"),  # empty members are allowed
        (["tenant@vendor=x y"], "tenant@vendor=x y"),
        (["Congo=1"], None),
        (["congo"], None),
        (["congo=1,Rojo=2"], None),  # one invalid member: none is propagated
        (["congo=a b "], "congo=a b"),
        ([""], None),
        ([",".join(f"k{i}=v" for i in range(33))], None),
    ],
)
def test_parse_tracestate(values: list[str], expected: str | None) -> None:
    assert tracing.parse_tracestate(values) == expected


def test_a_long_tracestate_loses_members_from_its_end() -> None:
    members = [f"k{i}={'v' * 200}" for i in range(4)]
    kept = tracing.parse_tracestate([",".join(members)])
    assert kept == ",".join(members[:2])
    assert len(kept) <= TRACESTATE_MAX_CHARS


def test_incoming_keeps_a_valid_trace_only() -> None:
    assert tracing.incoming(VALID, ["congo=1"]) == {"traceparent": VALID, "tracestate": "congo=1"}
    assert tracing.incoming(VALID, []) == {"traceparent": VALID}
    assert tracing.incoming(VALID, ["Bad=1"]) == {"traceparent": VALID}
    assert tracing.incoming("nonsense", ["congo=1"]) is None


def test_a_new_trace_is_valid_unsampled_and_new_each_time() -> None:
    made = [tracing.new_trace()["traceparent"] for _ in range(100)]
    assert all(tracing.parse_traceparent(t) == t and t.endswith("-00") for t in made)
    assert len({t[3:35] for t in made}) == 100


@pytest.mark.parametrize(
    ("settings", "environ", "expected"),
    [
        (TracingSettings(), {}, None),
        (TracingSettings(otlp_endpoint="http://c:4318"), {}, "http://c:4318"),
        (TracingSettings(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ""),
        (TracingSettings(), {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/v1/traces"}, ""),
        (TracingSettings(otlp_endpoint="http://c:4318"), {"OTEL_SDK_DISABLED": "TRUE"}, None),
    ],
)
def test_endpoint(settings: TracingSettings, environ: dict[str, str], expected: str | None) -> None:
    assert tracing.endpoint(settings, environ) == expected


def test_tracing_configured_without_the_sdk_stops_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if the extra were not installed (and no other test had imported core.otel).
    monkeypatch.setitem(sys.modules, "core.otel", None)
    monkeypatch.delattr(core, "otel", raising=False)
    settings = TracingSettings(otlp_endpoint="http://c:4318")
    with (
        pytest.raises(tracing.TracingUnavailable, match=r"aifi-gateway\[otel\]"),
        tracing.configured(settings, "aifi-test", {}),
    ):
        pass


def test_tracing_off_imports_no_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from core import tracing\n"
        "from core.settings import TracingSettings\n"
        "import gateway.app, gateway.processes, consumers.__main__, consumers.runner\n"
        "with tracing.configured(TracingSettings(), 'x', {}) as tracer:\n"
        "    assert tracer is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
