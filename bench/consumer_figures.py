"""The consumer figures of `bench.consumer_bench`, for the report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from bench import ledger_bench
from bench.consumer_bench import run

LEDGER_KEY: Final = "ledger_msgs_per_s"
BARE_KEY: Final = "bare_msgs_per_s"


def consumer_figures(amqp_url: str, count: int) -> dict[str, float] | str:
    """`consumer_bench.run(amqp_url, count)` and `ledger_bench.run`, or why there are no
    consumer figures."""
    try:
        # The ledger's backends (PostgreSQL with one and two workers) beside them.
        return run(amqp_url, count) | ledger_bench.run(amqp_url, count)
    # The outermost step of the consumer run: the server figures must be reported anyway.
    except Exception as exc:
        return f"the consumer bench failed: {exc!r}"


def consumer_pair(figures: Mapping[str, float]) -> tuple[float, float] | None:
    """(ledger, bare) consumer throughput; None if either is missing."""
    if LEDGER_KEY in figures and BARE_KEY in figures:
        return figures[LEDGER_KEY], figures[BARE_KEY]
    return None
