"""Sampling profiles of a server under the bench's load (py-spy), and their top costs.

`python -m bench --profile` records one collapsed-stack file per server under
`bench/results/profiles/`; `python -m bench.profile FILE` prints the top
functions by self time (the leaf of a sample) and by cumulative time (anywhere
in a sample's stack below the event loop, counted once per sample).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

RATE_HZ: Final = 250  # enough samples in ~10 s to rank functions, little enough to perturb
NO_PYTHON_FRAME: Final = "(no Python frame)"
LOOP_RUNNERS: Final = frozenset(
    {"run_app", "run_until_complete", "run_forever", "Runner.run", "_run_once"}
)


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def start_recording(
    pid: int, duration_s: float, output: Path
) -> asyncio.subprocess.Process | None:
    """py-spy sampling `pid` for `duration_s` into `output`; None when py-spy is missing."""
    binary = py_spy()
    if binary is None:
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        binary,
        "record",
        f"--pid={pid}",
        f"--duration={max(1, round(duration_s))}",
        f"--rate={RATE_HZ}",
        "--nonblocking",  # never pause the server: the figures of a profiled run stay usable
        "--function",  # one entry per function, not per line
        "--subprocesses",  # a gateway with http.processes > 1 serves from its children
        "--format=raw",
        f"--output={output}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def finish(recorder: asyncio.subprocess.Process, duration_s: float) -> None:
    """Let py-spy write its file; stop it if it outlives its duration by much."""
    try:
        await asyncio.wait_for(recorder.wait(), duration_s + 10)
    except TimeoutError:
        recorder.kill()
        await recorder.wait()


@dataclass(frozen=True)
class Summary:
    samples: int
    by_self: list[tuple[str, int]]
    by_cumulative: list[tuple[str, int]]
    by_package: list[tuple[str, int]]  # self time per top-level package or stdlib module


def parse(lines: Iterable[str]) -> Iterable[tuple[list[str], int]]:
    """(stack from the root, samples) of each line `frame;frame;... count`.

    The `process <pid>:"<cmd>"` pseudo-frame `--subprocesses` adds is dropped.
    """
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            frames = [f for f in stack.split(";") if not f.startswith("process ")]
            yield frames or [NO_PYTHON_FRAME], int(count)


def function_name(frame: str) -> str:
    return frame.partition(" (")[0]


def package(frame: str) -> str:
    """`aiohttp` for `f (aiohttp/web.py:1)`, `uuid` for `f (uuid.py:1)`."""
    if frame == NO_PYTHON_FRAME:
        return frame
    if function_name(frame) in LOOP_RUNNERS:
        return "event loop (uvloop's C code)"
    where = frame.rpartition(" (")[2].rstrip(")").rpartition(":")[0]
    return where.split("/")[0].removesuffix(".py") or "?"


def below_loop(stack: list[str]) -> list[str]:
    """The stack from the event loop down: the frames above it are in every sample.

    Drops the start-up chain (`<module>`, `main`, `serve`) above the loop runner;
    callbacks run by uvloop's C loop appear right under `run_app`.
    """
    runners = [i for i, f in enumerate(stack) if function_name(f) in LOOP_RUNNERS]
    return stack[runners[-1] :] if runners else stack


def summarize(lines: Iterable[str], top: int) -> Summary:
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for stack, count in parse(lines):
        total += count
        own[stack[-1]] += count
        packages[package(stack[-1])] += count
        for frame in set(below_loop(stack)):  # a recursive function counts once per sample
            anywhere[frame] += count
    return Summary(
        total, own.most_common(top), anywhere.most_common(top), packages.most_common(top)
    )


def format_summary(summary: Summary, title: str) -> str:
    def rows(name: str, ranked: list[tuple[str, int]]) -> list[str]:
        lines = [f"  by {name} time:"]
        for rank, (frame, count) in enumerate(ranked, 1):
            share = 100 * count / summary.samples if summary.samples else 0.0
            lines.append(f"  {rank:3d}. {share:5.1f}%  {frame}")
        return lines

    header = (
        f"{title}: {summary.samples} busy samples (all threads; the self time of run_app"
        " is uvloop's C loop: socket I/O, polling, scheduling)"
    )
    return "\n".join(
        [
            header,
            *rows("self", summary.by_self),
            *rows("cumulative", summary.by_cumulative),
            *rows("package self", summary.by_package),
        ]
    )


def report(directory: Path, names: Sequence[str], top: int = 15) -> str:
    """The summaries of the profiles `python -m bench --profile` recorded for `names`."""
    sections = []
    for name in names:
        path = directory / f"{name}.txt"
        if path.exists():
            with path.open() as lines:
                sections.append(format_summary(summarize(lines, top), name))
        else:
            sections.append(f"{name}: no profile (is py-spy installed? pip install py-spy)")
    return "\n\n".join(sections)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path, help="py-spy --format=raw output")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    for path in args.files:
        with path.open() as lines:
            print(format_summary(summarize(lines, args.top), str(path)))


if __name__ == "__main__":
    main()
