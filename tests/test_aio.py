"""The asyncio helpers the processes share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from core.aio import (
    backing_off,
    backoff_s,
    cancel_and_wait,
    first_of,
    paused,
    retrying,
    stop_task,
)


def test_backoff_doubles_from_a_tenth_of_a_second_up_to_its_cap() -> None:
    assert [backoff_s(attempt, 1.0) for attempt in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


async def test_a_pause_cut_short_by_stop_says_so() -> None:
    stop = asyncio.Event()
    stop.set()
    assert await asyncio.wait_for(paused(3600, stop), 5) is True


async def test_a_pause_that_runs_its_course_says_so() -> None:
    assert await paused(0.01, asyncio.Event()) is False
    assert await paused(0.01) is False


class Flaky(Exception):
    pass


def failing(times: int, error: Exception) -> Callable[[], Awaitable[str]]:
    """An attempt that raises `error` the first `times` calls, then returns "done"."""
    calls: list[None] = []

    async def attempt() -> str:
        calls.append(None)
        if len(calls) <= times:
            raise error
        return "done"

    return attempt


async def test_retrying_waits_after_each_transient_failure_then_returns() -> None:
    waits: list[tuple[str, int]] = []

    async def wait(exc: Exception, failures: int) -> None:
        waits.append((str(exc), failures))

    assert await retrying(failing(3, Flaky("busy")), (Flaky,), wait) == "done"
    assert waits == [("busy", 0), ("busy", 1), ("busy", 2)]


async def test_retrying_gives_up_when_wait_raises() -> None:
    async def give_up(exc: Exception, failures: int) -> None:
        raise RuntimeError(f"gave up after {failures + 1}") from exc

    with pytest.raises(RuntimeError, match="gave up after 1"):
        await retrying(failing(5, Flaky("busy")), (Flaky,), give_up)


async def test_retrying_lets_other_errors_through_without_waiting() -> None:
    waits: list[int] = []

    async def wait(exc: Exception, failures: int) -> None:
        waits.append(failures)

    with pytest.raises(ValueError, match="bad"):
        await retrying(failing(1, ValueError("bad")), (Flaky,), wait)
    assert waits == []


async def test_backing_off_reports_each_pause_as_it_grows_to_its_cap() -> None:
    reports: list[tuple[str, float]] = []
    wait = backing_off(
        0.2, asyncio.Event(), lambda exc, pause_s: reports.append((str(exc), pause_s))
    )
    assert await retrying(failing(3, Flaky("busy")), (Flaky,), wait) == "done"
    assert reports == [("busy", 0.1), ("busy", 0.2), ("busy", 0.2)]


async def test_backing_off_cut_short_by_stop_raises_what_stopped_makes() -> None:
    stop = asyncio.Event()
    stop.set()
    wait = backing_off(3600, stop, lambda exc, pause_s: None, lambda exc: RuntimeError(f"{exc}"))
    with pytest.raises(RuntimeError, match="busy"):
        await asyncio.wait_for(retrying(failing(1, Flaky("busy")), (Flaky,), wait), 5)


async def test_backing_off_cut_short_without_stopped_tries_again_at_once() -> None:
    stop = asyncio.Event()
    stop.set()
    wait = backing_off(3600, stop, lambda exc, pause_s: None)
    assert await asyncio.wait_for(retrying(failing(1, Flaky("busy")), (Flaky,), wait), 5) == "done"


async def test_first_of_returns_with_the_first_and_cancels_the_rest() -> None:
    never = asyncio.get_running_loop().create_future()
    await asyncio.wait_for(first_of(asyncio.sleep(0), never), 5)
    await asyncio.sleep(0)
    assert never.cancelled()


async def test_first_of_returns_once_what_it_cancelled_has_ended() -> None:
    settled: list[str] = []

    async def settling_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)  # a batch settling as its connection goes
            settled.append("settled")

    await asyncio.wait_for(first_of(asyncio.sleep(0), settling_when_cancelled()), 5)
    assert settled == ["settled"]


async def test_cancel_and_wait_ends_each_future_whatever_it_ends_with() -> None:
    async def failing_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("while stopping")

    failing = asyncio.ensure_future(failing_when_cancelled())
    pending = asyncio.get_running_loop().create_future()
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(failing, pending), 5)
    assert failing.done()
    assert isinstance(failing.exception(), RuntimeError)
    assert pending.cancelled()


async def test_stopping_no_task_does_nothing() -> None:
    await stop_task(None)


async def test_stopping_a_running_task_cancels_it_quietly() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    await stop_task(task)
    assert task.cancelled()


async def test_stopping_a_task_that_failed_raises_what_ended_it() -> None:
    async def fail() -> None:
        raise LookupError("gone")

    task = asyncio.create_task(fail())
    await asyncio.wait([task])
    with pytest.raises(LookupError, match="gone"):
        await stop_task(task)
