"""The consumer figures, from `bench/consumer_bench.py` (written apart) when it is there."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Mapping
from typing import Any, Final

MODULE: Final = "bench.consumer_bench"


async def awaited(awaitable: Any) -> Any:
    return await awaitable


def consumer_figures(amqp_url: str, count: int) -> dict[str, float] | str:
    """`bench.consumer_bench.run(amqp_url, count)`, or why there are no consumer figures."""
    try:
        module = importlib.import_module(MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == MODULE:
            return f"{MODULE} is not there yet"
        return f"{MODULE} cannot be imported: {exc!r}"
    # Someone else's module: whatever it raises, the server figures must still be reported.
    except Exception as exc:
        return f"{MODULE} cannot be imported: {exc!r}"
    try:
        result: Any = module.run(amqp_url, count)
        if inspect.isawaitable(result):  # the sync signature is the contract; be lenient anyway
            result = asyncio.run(awaited(result))
        return {str(k): float(v) for k, v in dict(result).items()}
    except Exception as exc:
        return f"{MODULE}.run failed: {exc!r}"


def consumer_pair(figures: Mapping[str, float]) -> tuple[float, float] | None:
    """(ledger, bare) consumer throughput, matched by key name; None if either is missing."""
    ledger = [k for k in sorted(figures) if "ledger" in k.lower()]
    bare = [k for k in sorted(figures) if "bare" in k.lower()]
    return (figures[ledger[0]], figures[bare[0]]) if ledger and bare else None
