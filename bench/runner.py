"""One server through the bench: start it, load it, count its events in RabbitMQ, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

from bench import profile
from bench.load import LoadFailed, LoadPlan, LoadResult, Tool, marked_routes, run_load
from bench.measure import Arrival, EventQueue, cpu_seconds, peak_rss_bytes
from bench.report import ServerFigures
from bench.servers import Running, ServerFailed, ServerSpec, started

# Lets the broker finish writing the previous server's messages before the next server starts.
COOLDOWN_S: Final = 2.0


@dataclass(frozen=True)
class Options:
    amqp_url: str
    duration_s: float
    connections: int
    threads: int
    tool: Tool
    drain_timeout_s: float  # bound on waiting for a backlog to reach RabbitMQ
    quiet_s: float  # the count not growing this long means nothing more will come
    profile_dir: Path | None


@dataclass(frozen=True)
class Timing:
    load_started: float  # time.monotonic(), just before the first request
    load_ended: float


def store_id() -> int:
    """A store id no one else uses: routing keys `*.<id>` are this server's events only."""
    return 1_000_000_000 + secrets.randbelow(1_000_000_000)


def server_figures(
    spec: ServerSpec,
    load: LoadResult,
    rss: int | None,
    arrival: Arrival | None,
    timing: Timing,
    cpu_s: float | None,
) -> ServerFigures:
    if arrival is None:
        return ServerFigures(spec.name, spec.label, load, rss, None, None, None, cpu_s)
    elapsed = arrival.at - timing.load_started
    return ServerFigures(
        name=spec.name,
        label=spec.label,
        load=load,
        peak_rss_bytes=rss,
        events=arrival.count,
        e2e_events_per_s=arrival.count / elapsed if elapsed > 0 else 0.0,
        drain_s=max(0.0, arrival.at - timing.load_ended),
        cpu_s=cpu_s,
    )


async def load_and_count(
    server: Running, queue: EventQueue, plan: LoadPlan, options: Options, token: str
) -> ServerFigures:
    cpu_before = cpu_seconds(server.pid)
    load_started = time.monotonic()
    load = await run_load(plan, token)
    timing = Timing(load_started, time.monotonic())
    server.check_alive()
    arrival = None
    if server.spec.publishes:
        arrival = await queue.wait_for(load.acknowledged, options.drain_timeout_s, options.quiet_s)
    rss = peak_rss_bytes(server.pid)  # before the stop: VmHWM goes with the process
    cpu_after = cpu_seconds(server.pid)
    cpu_s = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    return server_figures(server.spec, load, rss, arrival, timing, cpu_s)


@contextlib.asynccontextmanager
async def profiled(server: Running, options: Options) -> AsyncIterator[None]:
    """py-spy on the server for the load's duration, if asked; never left running after."""
    if options.profile_dir is None:
        yield
        return
    output = options.profile_dir / f"{server.spec.name}.txt"
    recorder = await profile.start_recording(server.pid, options.duration_s, output)
    try:
        yield
    finally:
        if recorder is not None:
            await profile.finish(recorder, options.duration_s)


async def measure_server(
    spec: ServerSpec, channel: AbstractChannel, options: Options, token: str
) -> ServerFigures:
    """The figures of `spec` under load; its queue is bound before and deleted after."""
    marker = store_id()
    with tempfile.TemporaryDirectory(prefix=f"aifi-bench-{spec.name}-") as tmp:
        workdir = Path(tmp)
        routes = marked_routes(marker, workdir)
        async with (
            EventQueue.bound(channel, f"*.{marker}") as queue,
            started(spec, options.amqp_url, token, workdir) as server,
        ):
            plan = LoadPlan(
                options.tool,
                server.url,
                options.duration_s,
                options.connections,
                options.threads,
                routes,
            )
            async with profiled(server, options):
                return await load_and_count(server, queue, plan, options, token)


@dataclass(frozen=True)
class Outcome:
    figures: list[ServerFigures]
    failures: list[str]  # servers that could not be measured, and why
    broker_version: str | None


def broker_version(connection: AbstractConnection) -> str | None:
    underlay = connection.transport
    if underlay is None:
        return None
    version = underlay.connection.server_properties.get("version")
    return version.decode() if isinstance(version, bytes) else str(version)


async def run_servers(specs: Sequence[ServerSpec], options: Options, token: str) -> Outcome:
    """Each server in turn, on one broker connection; a failed server does not stop the rest."""
    figures: list[ServerFigures] = []
    failures: list[str] = []
    # Not connect_robust: a robust channel answers a passive declare from its cache,
    # which would freeze the message count the bench polls.
    connection = await aio_pika.connect(options.amqp_url)
    async with connection, connection.channel() as channel:
        for spec in specs:
            print(f"-- {spec.label}: {options.duration_s:g} s of load ...", flush=True)
            try:
                figures.append(await measure_server(spec, channel, options, token))
            except (ServerFailed, LoadFailed) as exc:
                failures.append(f"{spec.name}: {exc}")
                print(f"   FAILED: {exc}", flush=True)
            await asyncio.sleep(COOLDOWN_S)
        return Outcome(figures, failures, broker_version(connection))
