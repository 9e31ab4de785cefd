"""The asyncio helpers the processes share."""

from __future__ import annotations

import asyncio

from core.aio import backoff_s, cancel_and_wait, first_of, paused


def test_backoff_doubles_from_a_tenth_of_a_second_up_to_its_cap() -> None:
    assert [backoff_s(attempt, 1.0) for attempt in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


async def test_a_pause_cut_short_by_stop_says_so() -> None:
    stop = asyncio.Event()
    stop.set()
    assert await asyncio.wait_for(paused(3600, stop), 5) is True


async def test_a_pause_that_runs_its_course_says_so() -> None:
    assert await paused(0.01, asyncio.Event()) is False
    assert await paused(0.01) is False


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
