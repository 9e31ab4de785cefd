"""The load, from a second process: `wrk` with `wrk_post.lua`, or a small aiohttp client.

Both post AiFi's example bodies round robin over `connections` keep-alive
connections for a fixed time and print one `BENCH_RESULT {json}` line, which
`run_load` parses into a `LoadResult`.

    BENCH_TOKEN=... python -m bench.load --url http://127.0.0.1:8080 --duration-s 10 \\
        --route /webhooks/aifi/entered=examples/entered.json
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, Literal

import aiohttp
import orjson
import uvloop

from bench import LOOPBACK, ROUTES

LUA_SCRIPT: Final = Path(__file__).resolve().parent / "wrk_post.lua"
RESULT_PREFIX: Final = "BENCH_RESULT "
TOKEN_ENV: Final = "BENCH_TOKEN"  # the environment, not argv: argv is world-readable in /proc
REQUEST_TIMEOUT_S: Final = 10.0  # long enough that a slow baseline shows as latency, not errors
TOP_LEVEL_STORE_ID: Final = re.compile(rb'^  "storeId": \d+', re.MULTILINE)
Tool = Literal["wrk", "aiohttp"]
Route = tuple[str, Path]  # (URL path, file holding the body posted to it)


class LoadFailed(Exception):
    """The load generator did not report its figures."""


@dataclass(frozen=True)
class LoadResult:
    tool: str
    duration_s: float
    requests: int  # responses received, whatever their status
    non_2xx: int
    socket_errors: int  # connect, read, write errors and timeouts: no response at all
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def acknowledged(self) -> int:
        return self.requests - self.non_2xx

    @property
    def rps(self) -> float:
        """Acknowledged (2xx) requests per second."""
        return self.acknowledged / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True)
class LoadPlan:
    tool: Tool
    url: str
    duration_s: float
    connections: int
    threads: int
    routes: Sequence[Route]


def pick_tool(preference: Literal["auto", "wrk", "aiohttp"]) -> Tool:
    if preference == "auto":
        return "wrk" if shutil.which("wrk") else "aiohttp"
    return preference


def marked_routes(store_id: int, directory: Path) -> list[Route]:
    """AiFi's example bodies with `store_id` as their top-level storeId, written to `directory`.

    The broker is shared: other runs publish to the same exchange, so the bench
    counts only routing keys `*.<store_id>`. Only the digits of that one field
    change; the bodies are otherwise the examples byte for byte.
    """
    routes = []
    for path, example in ROUTES:
        body, replaced = TOP_LEVEL_STORE_ID.subn(
            f'  "storeId": {store_id}'.encode(), example.read_bytes()
        )
        assert replaced == 1, f"{example} must have exactly one top-level storeId"
        marked = directory / example.name
        marked.write_bytes(body)
        routes.append((path, marked))
    return routes


def route_args(routes: Sequence[Route]) -> list[str]:
    return [f"{path}={file}" for path, file in routes]


def load_command(plan: LoadPlan) -> list[str]:
    if plan.tool == "wrk":
        return [
            "wrk",
            # wrk refuses fewer connections than threads.
            f"--threads={min(plan.threads, plan.connections)}",
            f"--connections={plan.connections}",
            f"--duration={max(1, round(plan.duration_s))}s",
            f"--timeout={REQUEST_TIMEOUT_S:g}s",
            f"--script={LUA_SCRIPT}",
            plan.url,
            "--",
            *route_args(plan.routes),
        ]
    return [
        sys.executable,
        "-m",
        "bench.load",
        f"--url={plan.url}",
        f"--duration-s={plan.duration_s}",
        f"--connections={plan.connections}",
        *(f"--route={arg}" for arg in route_args(plan.routes)),
    ]


def parse_result(output: str) -> LoadResult:
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            return LoadResult(**orjson.loads(line[len(RESULT_PREFIX) :]))
    raise LoadFailed(f"no {RESULT_PREFIX.strip()} line in the load's output:\n{output[-2000:]}")


async def run_load(plan: LoadPlan, token: str) -> LoadResult:
    """Load `plan.url` from another process for `plan.duration_s`; what it measured."""
    assert plan.url.startswith(f"http://{LOOPBACK}:"), "loopback only"
    process = await asyncio.create_subprocess_exec(
        *load_command(plan),
        env=os.environ | {TOKEN_ENV: token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise LoadFailed(f"{plan.tool} exited with {process.returncode}:\n{text[-2000:]}")
    return parse_result(text)


# The fallback client, run as `python -m bench.load` where wrk is missing.


@dataclass
class Tally:
    """What the workers of one run saw; owned by `hammer`, never shared across runs."""

    latencies_s: list[float]
    non_2xx: int = 0
    socket_errors: int = 0


def percentile_ms(sorted_s: Sequence[float], fraction: float) -> float:
    if not sorted_s:
        return 0.0
    index = min(len(sorted_s) - 1, max(0, math.ceil(fraction * len(sorted_s)) - 1))
    return sorted_s[index] * 1000


async def worker(
    session: aiohttp.ClientSession,
    bodies: list[tuple[str, bytes]],
    offset: int,
    deadline: float,
    tally: Tally,
) -> None:
    index = offset
    while time.monotonic() < deadline:
        path, body = bodies[index % len(bodies)]
        index += 1
        started = time.perf_counter()
        try:
            async with session.post(path, data=body) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError):
            tally.socket_errors += 1
            continue
        tally.latencies_s.append(time.perf_counter() - started)
        tally.non_2xx += not 200 <= response.status < 300


async def hammer(
    url: str, token: str, duration_s: float, connections: int, routes: Sequence[Route]
) -> LoadResult:
    bodies = [(path, file.read_bytes()) for path, file in routes]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    tally = Tally(latencies_s=[])
    session = aiohttp.ClientSession(
        base_url=url,
        headers=headers,
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    )
    async with session:
        started = time.monotonic()
        deadline = started + duration_s
        await asyncio.gather(
            *(worker(session, bodies, n, deadline, tally) for n in range(connections))
        )
        elapsed = time.monotonic() - started
    latencies = sorted(tally.latencies_s)
    return LoadResult(
        tool="aiohttp",
        duration_s=elapsed,
        requests=len(latencies),
        non_2xx=tally.non_2xx,
        socket_errors=tally.socket_errors,
        p50_ms=percentile_ms(latencies, 0.50),
        p99_ms=percentile_ms(latencies, 0.99),
        max_ms=latencies[-1] * 1000 if latencies else 0.0,
    )


def parse_route(text: str) -> Route:
    path, sep, file = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected PATH=FILE, got {text!r}")
    return path, Path(file)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--route", type=parse_route, action="append", metavar="PATH=FILE")
    args = parser.parse_args(argv)
    token = os.environ.get(TOKEN_ENV, "")
    routes = args.route or list(ROUTES)
    result = uvloop.run(hammer(args.url, token, args.duration_s, args.connections, routes))
    print(RESULT_PREFIX + orjson.dumps(asdict(result)).decode(), flush=True)


if __name__ == "__main__":
    main()
