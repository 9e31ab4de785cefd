"""The ledger's backends side by side: events per second applied by `aifi-consumer` worker
processes, and the peak RSS of each, in the same run.

    python -m bench.ledger_bench [--url AMQP_URL] [--pg-url URL] [--count 20000] [--rounds 3]

Four kinds of run, in `rounds` rounds (the best round of each is reported, as timeit does:
on a shared machine a slow round measures the neighbours), each on a quorum queue of its
own that holds the same `count` entries before it starts: the bare consumer (a process
that acks and does nothing else), one SQLite ledger worker, one PostgreSQL ledger worker,
and two PostgreSQL ledger workers competing for one queue. Every consumer is a process of
its own, so that two workers may use two cores, and is timed from its first applied (or
acked) event to its last, which leaves out process start-up. PostgreSQL is the one at
`--pg-url`, else a private node started (and stopped) for the run. Peak RSS is each
process's VmHWM; `machine_busy` is the share of all cores busy during a run (the broker,
PostgreSQL and the workers share them), `workers_cpu_s` the workers' CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Final

import aio_pika
import orjson
import uvloop
import yaml
from aio_pika.abc import AbstractIncomingMessage

from bench import DEFAULT_AMQP_URL
from bench.consumer_bench import fill, scratch_queues
from core import contract
from core.settings import ConsumerSettings, LedgerSettings
from devtools import pgnode
from devtools.rabbitnode import free_port
from ledger.ledger import opened as open_ledger
from tests.support.ledger_schema import Counter, processed_counter
from tests.support.processes import child_environ

ROOT: Final = Path(__file__).resolve().parent.parent
TIMEOUT_S: Final = 300.0
POLL_S: Final = 0.01
KINDS: Final = ("bare", "sqlite", "pg1", "pg2")
# Events per second, peak RSS of each process (MiB), and other figures of one run.
Figures = tuple[float, list[float], dict[str, float]]


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def bare_consumer(url: str, queue: str, count: int, prefetch: int) -> None:
    """The bare consumer's process: ack `count` messages, print seconds and peak RSS."""
    connection = await aio_pika.connect(url)
    times: list[float] = []
    done = asyncio.Event()

    async def ack(message: AbstractIncomingMessage) -> None:
        await message.ack()
        times.append(time.perf_counter())
        if len(times) >= count:
            done.set()

    async with connection, connection.channel() as channel:
        await channel.set_qos(prefetch_count=prefetch)
        await (await channel.get_queue(queue)).consume(ack)
        await asyncio.wait_for(done.wait(), TIMEOUT_S)
    print(
        orjson.dumps(
            {"seconds": times[-1] - times[0], "rss_mib": peak_rss_mib(os.getpid())}
        ).decode()
    )


async def bare(url: str, name: str, count: int, prefetch: int) -> Figures:
    argv = [sys.executable, "-m", "bench.ledger_bench", "bare", url, name, str(count)]
    done = await asyncio.to_thread(
        subprocess.run, [*argv, str(prefetch)], cwd=ROOT, capture_output=True, check=True
    )
    result = orjson.loads(done.stdout)
    return count / result["seconds"], [result["rss_mib"]], {}


@contextlib.contextmanager
def worker_processes(
    folder: Path, amqp_url: str, name: str, settings: ConsumerSettings, ledger_env: dict[str, str],
    count: int,
) -> Iterator[list[subprocess.Popen[bytes]]]:  # fmt: skip
    """`count` `python -m consumers NAME` processes; SIGTERM and reaped afterwards."""
    config = folder / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"consumers": {name: settings.model_dump(mode="json")}}))
    env = child_environ() | {"AIFI_AMQP_URL": amqp_url, "AIFI_CONFIG": str(config), **ledger_env}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "consumers", name],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        yield processes
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) clock ticks of every core since boot, from /proc/stat."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


async def timed(processed: Counter, count: int) -> float:
    """Seconds from the first event the ledger holds to the `count`th."""
    async with asyncio.timeout(TIMEOUT_S):
        while (first := await processed()) == 0:  # noqa: ASYNC110 - another process
            await asyncio.sleep(POLL_S)
        started = time.perf_counter()
        while await processed() < count:  # noqa: ASYNC110 - another process's work
            await asyncio.sleep(POLL_S)
    # The first look saw `first` events already: time them as the rest were.
    elapsed = time.perf_counter() - started
    return elapsed * count / (count - first)


async def workers(
    folder: Path, amqp_url: str, queue: tuple[str, ConsumerSettings], settings: LedgerSettings,
    how_many: int, count: int,
) -> Figures:  # fmt: skip
    """Events per second that `how_many` ledger workers apply, each one's peak RSS, their
    CPU seconds (start-up included) and how busy the machine's cores were meanwhile."""
    name, consumer = queue
    env = (
        {"AIFI_LEDGER_URL": settings.url} if settings.url else {"AIFI_LEDGER_DB": str(settings.db)}
    )
    # Opened first: it creates the schema the workers and the counter use.
    async with open_ledger(settings), processed_counter(settings) as processed:
        with worker_processes(folder, amqp_url, name, consumer, env, how_many) as processes:
            busy_before = machine_busy()
            seconds = await timed(processed, count)
            busy_after = machine_busy()
            rss = [peak_rss_mib(p.pid) for p in processes]
            cpu = sum(cpu_s(p.pid) for p in processes)
        if (applied := await processed()) != count:
            raise RuntimeError(f"the workers applied {applied} events of {count}")
    busy = (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1])
    return count / seconds, rss, {"workers_cpu_s": cpu, "machine_busy": busy}


@contextlib.asynccontextmanager
async def postgres(given: str | None) -> AsyncIterator[str]:
    """The server at `given`, or a private node for the run."""
    if given:
        yield given
        return
    base = Path(tempfile.mkdtemp(prefix="aifi-bench-pg-"))
    node = pgnode.PgNode(base, free_port())
    try:
        await asyncio.to_thread(pgnode.ensure_installed)
        await asyncio.to_thread(node.start)
        yield node.url
    finally:
        await asyncio.to_thread(node.stop)
        shutil.rmtree(base, ignore_errors=True)


async def fresh_schema(url: str, name: str) -> str:
    """`url` in a new schema `name` (so that each run starts from an empty ledger)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        await connection.execute(f"CREATE SCHEMA {name}")
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"


async def measure(amqp_url: str, pg_url: str | None, count: int, rounds: int) -> dict[str, float]:
    """The best of `rounds` rounds of each kind, on queues holding `count` events each."""
    settings = ConsumerSettings()
    best: dict[str, Figures] = {}
    async with (
        postgres(pg_url) as server,
        scratch_queues(amqp_url, settings, len(KINDS) * rounds) as (store, names),
    ):
        await fill(amqp_url, store, count)
        consumer = settings.model_copy(update={"bindings": (f"entered.{store}",)})
        queues = iter(names)
        with tempfile.TemporaryDirectory() as tmp:
            for n in range(rounds):
                for kind in KINDS:
                    queue, folder = (next(queues), consumer), Path(tmp) / f"{kind}-{n}"
                    folder.mkdir()
                    got = await one_kind(kind, folder, amqp_url, server, queue, count)
                    if kind not in best or got[0] > best[kind][0]:
                        best[kind] = got
    return figures(count, rounds, best)


async def one_kind(
    kind: str, folder: Path, amqp_url: str, server: str, queue: tuple[str, ConsumerSettings],
    count: int,
) -> Figures:  # fmt: skip
    if kind == "bare":
        return await bare(amqp_url, contract.queue_name(queue[0]), count, queue[1].prefetch)
    if kind == "sqlite":
        sqlite = LedgerSettings(db=folder / "ledger.sqlite3")
        return await workers(folder, amqp_url, queue, sqlite, 1, count)
    url = await fresh_schema(server, f"bench_{folder.name.replace('-', '_')}_{queue[0]}")
    return await workers(folder, amqp_url, queue, LedgerSettings(url=url), int(kind[2:]), count)


def figures(count: int, rounds: int, rates: dict[str, Figures]) -> dict[str, float]:
    result: dict[str, float] = {"ledger_count": float(count), "ledger_rounds": float(rounds)}
    for kind, (per_s, rss, more) in rates.items():
        result[f"{kind}_msgs_per_s"] = per_s
        result[f"{kind}_peak_rss_mib"] = max(rss)
        result |= {f"{kind}_{key}": value for key, value in more.items()}
    result["pg1_vs_bare"] = result["pg1_msgs_per_s"] / result["bare_msgs_per_s"]
    result["pg2_vs_pg1"] = result["pg2_msgs_per_s"] / result["pg1_msgs_per_s"]
    return result


def run(amqp_url: str, count: int, pg_url: str | None = None, rounds: int = 3) -> dict[str, float]:
    """Figures for `make bench`: msgs/s and peak RSS of each consumer kind, and the ratios."""
    return uvloop.run(measure(amqp_url, pg_url, count, rounds))


def report(result: dict[str, float]) -> None:
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(
        f"PostgreSQL ledger: one worker / bare = {result['pg1_vs_bare']:.2f} (target >= 0.5), "
        f"two workers / one = {result['pg2_vs_pg1']:.2f} (target >= 1.3)"
    )


def main() -> None:
    if sys.argv[1:2] == ["bare"]:
        url, queue, count, prefetch = sys.argv[2:6]
        uvloop.run(bare_consumer(url, queue, int(count), int(prefetch)))
        return
    parser = argparse.ArgumentParser(
        prog="python -m bench.ledger_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--pg-url", default=None, help="default: a private node for the run")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    report(run(args.url, args.count, args.pg_url, args.rounds))


if __name__ == "__main__":
    main()
