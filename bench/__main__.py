"""`python -m bench` (`make bench`): every server under the same load, in one go, then ratios.

Servers, each in a process of its own on 127.0.0.1: a bare aiohttp bound, the
naive baseline, the gateway with `spool.fsync` `always` (its default) and
`never`, and with `gateway.ack: confirmed`. Then the consumer figures, if
`bench/consumer_bench.py` is there, and the presence API against a bare handler
(`bench/presence_bench.py`, its figures in `<results>/presence-<stem>.json`). Missing a
target never fails the run: this is a benchmark, not a test; only a server or load that
could not run does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import aiormq

from bench import DEFAULT_AMQP_URL, RESULTS, presence_bench, profile
from bench.consumer_figures import consumer_figures, consumer_pair
from bench.load import LoadFailed, pick_tool
from bench.report import (
    Run,
    machine_info,
    now_iso,
    print_report,
    ratios,
    write_json,
    write_results,
)
from bench.runner import Options, run_servers
from bench.servers import NAMES, SPECS, ServerFailed
from core.logs import redact
from core.settings import AmqpSettings

CONSUMERS: Final = "consumers"
PRESENCE: Final = "presence"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration-s", type=float, default=10.0, help="load per server")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default: 1)")
    parser.add_argument(
        "--only",
        action="append",
        choices=[*NAMES, CONSUMERS, PRESENCE],
        metavar="NAME",
        help=f"run only this (repeatable): {', '.join([*NAMES, CONSUMERS, PRESENCE])}",
    )
    parser.add_argument("--load", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--drain-timeout-s", type=float, default=120.0)
    parser.add_argument("--quiet-s", type=float, default=3.0)
    parser.add_argument("--consumer-count", type=int, default=20_000)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record each server with py-spy into <results>/profiles/",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace, amqp_url: str) -> Options:
    return Options(
        amqp_url=amqp_url,
        duration_s=args.duration_s,
        connections=args.connections,
        threads=args.threads,
        tool=pick_tool(args.load),
        drain_timeout_s=args.drain_timeout_s,
        quiet_s=args.quiet_s,
        profile_dir=args.results / "profiles" if args.profile else None,
    )


def settings_of(options: Options, profiled: bool, loadavg: Sequence[float]) -> dict[str, Any]:
    return {
        "load": options.tool,
        "duration_s": options.duration_s,
        "connections": options.connections,
        "threads": options.threads,
        "profiled": profiled,
        "broker": redact(options.amqp_url),
        "loadavg_1m_before_after": list(loadavg),
    }


def warn_if_busy(loadavg_1m: float) -> None:
    # The ratios compare servers measured one after the other: other work on the machine
    # skews them, and a reader of the figures should know.
    cpus = len(os.sched_getaffinity(0))
    if loadavg_1m > cpus / 2:
        print(
            f"note: load average {loadavg_1m:.1f} on {cpus} CPUs before the run: "
            "other work competes for the CPU, expect noisy figures",
            flush=True,
        )


def broker_url(environ: Mapping[str, str]) -> str:
    """The first of `AIFI_AMQP_URL`'s URLs, read as the gateway reads it."""
    if "AIFI_AMQP_URL" not in environ:
        return DEFAULT_AMQP_URL
    return AmqpSettings.model_validate({"urls": environ["AIFI_AMQP_URL"]}).urls[0]


def presence(args: argparse.Namespace, stem: str) -> int:
    """The presence API against a bare handler, its figures beside the run's; 1 if either
    server or the load could not run."""
    print(f"-- presence API: GET /stores/{{storeId}}, {args.duration_s:g} s per round ...")
    try:
        figures = presence_bench.run(args.duration_s, args.connections)
    except (ServerFailed, LoadFailed, RuntimeError) as exc:
        print(f"bench: the presence bench could not run: {exc}", file=sys.stderr)
        return 1
    print()
    presence_bench.report(figures)
    args.results.mkdir(parents=True, exist_ok=True)
    write_json(args.results / f"presence-{stem}.json", {"date": now_iso(), **figures})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or [*NAMES, CONSUMERS, PRESENCE]
    if names == [PRESENCE]:  # needs no broker
        return presence(args, "partial")
    amqp_url = broker_url(os.environ)
    options = options_from(args, amqp_url)
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    print(
        f"bench: load {options.tool}, {options.connections} connections, "
        f"{options.duration_s:g} s per server, broker {redact(amqp_url)}",
        flush=True,
    )
    loadavg = [os.getloadavg()[0]]
    warn_if_busy(loadavg[0])
    token = secrets.token_urlsafe(24)  # this run's only token; never printed
    specs = [s for s in SPECS if s.name in names]
    try:
        outcome = asyncio.run(run_servers(specs, options, token))
    except (aiormq.exceptions.AMQPConnectionError, OSError) as exc:
        print(f"bench: cannot use RabbitMQ at {redact(amqp_url)}: {exc!r}", file=sys.stderr)
        return 2

    consumers: dict[str, float] | str = "not selected"
    if CONSUMERS in names:
        print(f"-- consumers: {args.consumer_count} events ...", flush=True)
        consumers = consumer_figures(amqp_url, args.consumer_count)
    loadavg.append(os.getloadavg()[0])
    pair = consumer_pair(consumers) if isinstance(consumers, dict) else None
    run = Run(
        date=now_iso(),
        command=command,
        settings=settings_of(options, args.profile, loadavg),
        machine=machine_info() | {"rabbitmq": outcome.broker_version},
        figures=outcome.figures,
        failures=outcome.failures,
        consumers=consumers,
        ratios=ratios({f.name: f for f in outcome.figures}, pair),
    )
    print_report(run)
    # A partial or profiled run must not overwrite the full figures docs/performance.md quotes.
    stem = "latest" if args.only is None and not args.profile else "partial"
    write_results(args.results, stem, run)
    failed = presence(args, stem) if PRESENCE in names else 0
    if options.profile_dir is not None:
        print()
        print(profile.report(options.profile_dir, [f.name for f in outcome.figures]))
    # Failing targets do not fail the run; a server or load that could not run does.
    return 1 if outcome.failures or failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
