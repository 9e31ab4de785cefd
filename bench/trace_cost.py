"""CPU per request of what tracing touches on the gateway's path, in one run, interleaved.

`python -m bench.trace_cost --base DIR` times, in processes of their own taking turns,
the per-request steps that carry an event from a parsed webhook to its bytes on disk and
on the wire: taking the webhook's trace (or starting one), normalizing into the event's
message, the spool's record and the publish frames. `before` is the tree at DIR (a
checkout without trace context, e.g. `git archive <commit> | tar -x -C DIR`), `off` and
`on` this tree, without and with OpenTelemetry spans (receive, spool, publish; the
spans encoded as OTLP protobuf by the batch processor's thread, counted too, never
sent). Process CPU time per request, median of the rounds; what the full request costs
besides (HTTP, pydantic, the event loop, disk and broker I/O) is the same in all three.
`make bench` measures the whole gateway, whose run-to-run noise is larger than what
this compares.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from multidict import CIMultiDict, CIMultiDictProxy

ROOT: Final = Path(__file__).resolve().parents[1]
EXAMPLE: Final = ROOT / "examples" / "entered.json"
TRACEPARENT: Final = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MODES: Final = ("before", "off", "on")


class Request:
    """What the trace step reads of an aiohttp request: its headers, as aiohttp keeps them."""

    def __init__(self, traced: bool) -> None:
        headers = CIMultiDict(
            {
                "Host": "127.0.0.1:8080",
                "Authorization": "Bearer x" * 4,
                "Content-Type": "application/json",
                "Content-Length": str(EXAMPLE.stat().st_size),
            }
        )
        if traced:
            headers["traceparent"] = TRACEPARENT
        self.headers = CIMultiDictProxy(headers)


Step = tuple[Callable[[], object], Callable[[], object]]
NOTHING: Final = object


def step(mode: str, traced: bool) -> Step:
    """One request's steps in `mode`, as the gateway's handler and relay take them."""
    import gateway.app  # noqa: F401 - every mode's heap as the gateway's: what a collection walks
    from core.contract import EXCHANGE
    from gateway import normalize, spool
    from gateway.frames import PublishEncoder

    raw = EXAMPLE.read_bytes()
    model = normalize.ENTERED.model.model_validate_json(raw)
    encoder = PublishEncoder(1, EXCHANGE, 131_064, 16 * 1024 * 1024)
    build, request = normalize.ENTERED.build, Request(traced)
    if mode == "before":

        def before() -> object:
            outbound = build(model, normalize.Receipt(raw, "aifi", datetime.now(UTC), {}))
            return spool.encode(1, outbound), encoder.encode(outbound)

        return before, NOTHING
    from core.tracing import new_trace
    from gateway.handlers import received_trace

    if mode == "on":
        return traced_step(raw, model, encoder, request)

    def off() -> object:
        trace = received_trace(request) or new_trace()  # type: ignore[arg-type]
        outbound = build(model, normalize.Receipt(raw, "aifi", datetime.now(UTC), {}, trace))
        return spool.encode(1, outbound), encoder.encode(outbound)

    return off, NOTHING


def traced_step(raw: bytes, model: Any, encoder: Any, request: Request) -> Step:
    from core import otel
    from core.tracing import EVENT_ID, span
    from gateway import normalize, spans, spool
    from gateway.handlers import received_trace

    provider = on_provider()
    tracer, build = otel.tracer(provider), normalize.ENTERED.build

    def on() -> object:
        parent = received_trace(request) or {}  # type: ignore[arg-type]
        with span(tracer, "receive", parent, "server") as receive:
            trace = receive.trace
            outbound = build(model, normalize.Receipt(raw, "aifi", datetime.now(UTC), {}, trace))
            with span(tracer, "spool", trace, "internal", {EVENT_ID: outbound.message_id}):
                record = spool.encode(1, outbound)
        publish = spans.started(tracer, outbound)
        frames = encoder.encode(outbound)
        if publish is not None:
            spans.ended(publish, None)
        return record, frames

    return on, provider.force_flush


def on_provider() -> Any:
    """A tracer provider whose batch processor's exporter encodes OTLP and sends nothing."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Encoding(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Encoding()))
    return provider


def measure(mode: str, traced: bool, requests: int) -> float:
    """CPU µs per request (all threads: the span exporter's included)."""
    run, flush = step(mode, traced)
    for _ in range(requests // 10):
        run()
    flush()
    gc.freeze()  # as the gateway does at start (gateway.processes.quiet_gc)
    started = time.process_time()
    for _ in range(requests):
        run()
    flush()
    return (time.process_time() - started) * 1e6 / requests


def child(argv: Sequence[str]) -> None:
    mode, traced, requests = argv[0], argv[1] == "traced", int(argv[2])
    print(f"{measure(mode, traced, requests):.3f}")


def one(base: Path, mode: str, traced: bool, requests: int) -> float:
    tree = base if mode == "before" else ROOT
    env = os.environ | {"PYTHONPATH": str(tree)}
    args = [mode, "traced" if traced else "untraced", str(requests)]
    command = [sys.executable, "-c", CHILD, *args]
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


CHILD: Final = "import sys; from bench.trace_cost import child; child(sys.argv[1:])"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.trace_cost", description=__doc__)
    parser.add_argument("--base", type=Path, required=True, help="the tree before tracing")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args(argv)
    (args.base / "bench" / "trace_cost.py").write_bytes(Path(__file__).read_bytes())
    for traced in (False, True):
        figures: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                figures[mode].append(one(args.base, mode, traced, args.requests))
        report(figures, "with a traceparent" if traced else "without a traceparent (the bench's)")


def report(figures: dict[str, list[float]], label: str) -> None:
    medians = {mode: statistics.median(values) for mode, values in figures.items()}
    print(f"-- {label}: CPU µs per request, median of {len(figures['off'])} rounds")
    for mode, values in figures.items():
        print(f"{mode:>7} {medians[mode]:8.2f}  (min {min(values):.2f}, max {max(values):.2f})")
    paired = [off - before for off, before in zip(figures["off"], figures["before"], strict=True)]
    print(
        f"off - before: {medians['off'] - medians['before']:+.2f} µs "
        f"(paired rounds: median {statistics.median(paired):+.2f})"
    )
    print(f"on - off: {medians['on'] - medians['off']:+.2f} µs")


if __name__ == "__main__":
    main()
