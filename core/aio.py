"""asyncio helpers the processes share: waiting for the first of several things, a pause
that a stop cuts short, the backoff between attempts, and the loop that retries."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
# Awaited after an attempt failed on a passing error (a database locked, down or starting),
# with the failures so far: returns when to try again, or raises to give up.
Wait = Callable[[Exception, int], Awaitable[None]]


def backoff_s(attempt: int, cap_s: float) -> float:
    return float(min(cap_s, 0.1 * 2**attempt))


async def paused(pause_s: float, stop: asyncio.Event | None = None) -> bool:
    """Sleep `pause_s`, cut short when `stop` is set; True if it was (the caller stops)."""
    if stop is None:
        await asyncio.sleep(pause_s)
        return False
    await first_of(stop.wait(), asyncio.sleep(pause_s))
    return stop.is_set()


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    transient: tuple[type[Exception], ...],
    wait: Wait,
) -> T:
    """What `attempt()` returns, trying it again after each `transient` error once
    `wait(error, failures_before)` has returned; `wait` raises to give up. Any other
    error ends the loop at once."""
    failures = 0
    while True:
        try:
            return await attempt()
        except transient as exc:
            await wait(exc, failures)
            failures += 1


def backing_off(
    cap_s: float,
    stop: asyncio.Event,
    report: Callable[[Exception, float], None],
    stopped: Callable[[Exception], Exception] | None = None,
) -> Wait:
    """A `retrying` wait: `report(error, pause_s)`, then a pause of `backoff_s` that `stop`
    cuts short; cut short, raise `stopped(error)`, or without `stopped` return (the
    attempt sees the stop)."""

    async def wait(exc: Exception, failures: int) -> None:
        pause_s = backoff_s(failures, cap_s)
        report(exc, pause_s)
        if await paused(pause_s, stop) and stopped is not None:
            raise stopped(exc)

    return wait


async def first_of(*waitables: Awaitable[Any]) -> None:
    """Wait until one of `waitables` is done; the others are cancelled, and have ended
    by the return (what they do as they are cancelled, they have done)."""
    tasks = [asyncio.ensure_future(w) for w in waitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*tasks)


async def cancel_and_wait(*futures: asyncio.Future[Any], timeout_s: float | None = None) -> None:
    """Cancel `futures` and wait until each has ended, whatever it ended with, or until
    `timeout_s` has passed (for what may not heed a cancel at once)."""
    for future in futures:
        future.cancel()
    if futures:
        await asyncio.wait(futures, timeout=timeout_s)


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait for its end; what ended it early, if anything, is raised."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.result()
