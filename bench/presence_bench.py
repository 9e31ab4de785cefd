"""The presence API against a bare aiohttp handler: requests per second of
`GET /stores/{storeId}` and the peak RSS of each server, in the same run.

    python -m bench.presence_bench [--duration-s 10] [--connections 32] [--rounds 3]

Both servers run in a process of their own on loopback, on uvloop, without an access log:
`aifi-presence` (its own settings path, bearer token, middlewares and metrics) over a SQLite
ledger of `STORES` stores filled beforehand, and `bench.presence_bare`, a handler that
answers the same route with a constant body of the same shape. Each is loaded in turn,
`rounds` times, by a client in a third process (aiohttp, keep-alive, the same for both) and
the best round of each is reported, as timeit does: on a shared machine a slow round
measures the neighbours. Peak RSS is each server's VmHWM at the end of its rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
import uvloop

from bench import LOOPBACK
from bench.load import RESULT_PREFIX, TOKEN_ENV, LoadResult, parse_result, percentile_ms
from bench.measure import peak_rss_bytes
from bench.servers import Running, ServerSpec, started
from consumers import testing
from core.contract import Event
from core.settings import LedgerSettings, load
from ledger import ledger

STORES: Final = 50
SESSIONS_PER_STORE: Final = 40
STORE: Final = 7  # the store every request asks for
TARGET: Final = 0.3  # presence / bare, requests per second
REQUEST_TIMEOUT_S: Final = 10.0
PYTHON: Final = (sys.executable, "-m", "bench.presence_bench")


def specs(token: str, db: Path) -> tuple[ServerSpec, ServerSpec]:
    presence_env = (
        ("AIFI_PRESENCE_TOKENS", f"bench={token}"),
        ("AIFI_LEDGER_DB", str(db)),
        ("AIFI_LOG_LEVEL", "WARNING"),
    )
    bare_argv = (sys.executable, "-m", "bench.presence_bare", "--port", "{port}")
    bare = ServerSpec("bare", "bare aiohttp", bare_argv, publishes=False)
    presence = ServerSpec(
        "presence", "aifi-presence", (*PYTHON, "presence", "--port", "{port}"), presence_env, False
    )
    return bare, presence


def events() -> list[Event]:
    """Every store's sessions entered, every other one left again."""
    made = []
    for store in range(1, STORES + 1):
        for n in range(SESSIONS_PER_STORE):
            session = f"s{store}-{n}"
            made.append(testing.transition("entered", store, session))
            if n % 2:
                made.append(testing.transition("exited", store, session))
    return [Event.from_body(outbound.body) for outbound in made]


async def fill(db: Path) -> None:
    async with ledger.opened(LedgerSettings(db=db)) as writer:
        await writer.apply(events())


# The presence server, as `python -m bench.presence_bench presence --port N`.


def serve_presence(port: int) -> None:
    """`aifi-presence` as it serves, its port given here (the rest from the environment)."""
    from presence.__main__ import serve

    serve(load(os.environ | {"AIFI_PRESENCE_HOST": LOOPBACK, "AIFI_PRESENCE_PORT": str(port)}))


# The load, as `python -m bench.presence_bench load --url URL ...` (token in BENCH_TOKEN).


async def getter(
    session: aiohttp.ClientSession, path: str, deadline: float, latencies: list[float]
) -> int:
    """GET `path` until `deadline`; how many answers were not 2xx."""
    failed = 0
    while time.monotonic() < deadline:
        started_s = time.perf_counter()
        async with session.get(path) as response:
            await response.read()
        latencies.append(time.perf_counter() - started_s)
        failed += not 200 <= response.status < 300
    return failed


async def hammer(
    url: str, path: str, token: str, duration_s: float, connections: int
) -> LoadResult:
    latencies: list[float] = []
    session = aiohttp.ClientSession(
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    )
    async with session:
        started_s = time.monotonic()
        deadline = started_s + duration_s
        failed = await asyncio.gather(
            *(getter(session, path, deadline, latencies) for _ in range(connections))
        )
        elapsed_s = time.monotonic() - started_s
    ordered = sorted(latencies)
    return LoadResult(
        tool="aiohttp",
        duration_s=elapsed_s,
        requests=len(ordered),
        non_2xx=sum(failed),
        socket_errors=0,
        p50_ms=percentile_ms(ordered, 0.50),
        p99_ms=percentile_ms(ordered, 0.99),
        max_ms=ordered[-1] * 1000 if ordered else 0.0,
    )


async def run_load(server: Running, token: str, duration_s: float, connections: int) -> LoadResult:
    """Load `server` from another process for `duration_s`; what it measured."""
    process = await asyncio.create_subprocess_exec(
        *PYTHON, "load", f"--url={server.url}", f"--path=/stores/{STORE}",
        f"--duration-s={duration_s}", f"--connections={connections}",
        env=os.environ | {TOKEN_ENV: token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    return parse_result(output.decode(errors="replace"))


# The bench.


@contextlib.asynccontextmanager
async def both(token: str, folder: Path) -> AsyncIterator[tuple[Running, Running]]:
    """The bare server and the presence API, started over a filled ledger."""
    db = folder / "ledger.sqlite3"
    await fill(db)
    bare, presence = specs(token, db)
    async with (
        started(bare, "", token, folder) as bare_server,
        started(presence, "", token, folder) as presence_server,
    ):
        yield bare_server, presence_server


async def measure(duration_s: float, connections: int, rounds: int) -> dict[str, Any]:
    token = secrets.token_urlsafe(24)  # this run's only token; never printed
    best: dict[str, LoadResult] = {}
    rss: dict[str, int | None] = {}
    with tempfile.TemporaryDirectory(prefix="aifi-bench-presence-") as tmp:
        async with both(token, Path(tmp)) as servers:
            for _ in range(rounds):
                for server in servers:
                    got = await run_load(server, token, duration_s, connections)
                    if got.non_2xx or got.requests == 0:
                        raise RuntimeError(f"{server.spec.name}: {got}\n{server.log_tail()}")
                    if server.spec.name not in best or got.rps > best[server.spec.name].rps:
                        best[server.spec.name] = got
            rss = {server.spec.name: peak_rss_bytes(server.pid) for server in servers}
    return figures(best, rss, duration_s, connections, rounds)


def figures(
    best: dict[str, LoadResult],
    rss: dict[str, int | None],
    duration_s: float,
    connections: int,
    rounds: int,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "route": "GET /stores/{storeId}",
        "duration_s": duration_s,
        "connections": connections,
        "rounds": rounds,
        "ledger": f"SQLite, {STORES} stores x {SESSIONS_PER_STORE} sessions",
    }
    for name, load_result in best.items():
        result[f"{name}_rps"] = load_result.rps
        result[f"{name}_p99_ms"] = load_result.p99_ms
        peak = rss.get(name)
        result[f"{name}_peak_rss_mib"] = peak / 2**20 if peak is not None else None
        result[f"{name}_load"] = asdict(load_result)
    result["presence_vs_bare"] = result["presence_rps"] / result["bare_rps"]
    return result


def run(duration_s: float = 10.0, connections: int = 32, rounds: int = 3) -> dict[str, Any]:
    """Figures for `make bench`: requests per second and peak RSS of each, and the ratio."""
    return uvloop.run(measure(duration_s, connections, rounds))


def report(result: dict[str, Any]) -> None:
    shown = {k: v for k, v in result.items() if not k.endswith("_load")}
    print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    print(
        f"presence API: {result['presence_rps']:,.0f} req/s, bare aiohttp "
        f"{result['bare_rps']:,.0f} req/s: {result['presence_vs_bare']:.2f} "
        f"(target >= {TARGET}); peak RSS {result['presence_peak_rss_mib']:.1f} MiB vs "
        f"{result['bare_peak_rss_mib']:.1f} MiB"
    )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.presence_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command")
    serving = commands.add_parser("presence", help="serve aifi-presence on --port")
    serving.add_argument("--port", type=int, required=True)
    loading = commands.add_parser("load", help="GET one path for a while; print BENCH_RESULT")
    loading.add_argument("--url", required=True)
    loading.add_argument("--path", required=True)
    for parsed in (parser, loading):
        parsed.add_argument("--duration-s", type=float, default=10.0)
        parsed.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.command == "presence":
        serve_presence(args.port)
    elif args.command == "load":
        token = os.environ.get(TOKEN_ENV, "")
        result = uvloop.run(hammer(args.url, args.path, token, args.duration_s, args.connections))
        print(RESULT_PREFIX + orjson.dumps(asdict(result)).decode(), flush=True)
    else:
        report(run(args.duration_s, args.connections, args.rounds))


if __name__ == "__main__":
    main()
