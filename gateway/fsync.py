"""When a spooled record counts as durable: the `spool.fsync` policies."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Protocol


class Durability(Protocol):
    async def durable(self) -> None:
        """Return once every record appended before the call is as durable as the policy says."""

    async def run(self) -> None:
        """Background work of the policy, if any; cancelled at shutdown."""


FdSource = Callable[[], int | None]


class GroupCommit:
    """`always`: one fdatasync covers every append waiting when it starts (group commit)."""

    def __init__(self, fd: FdSource) -> None:
        self._fd = fd
        self._waiting: list[asyncio.Future[None]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def durable(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        await waiter

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await sync(self._fd())
            except OSError as exc:
                settle(batch, exc)
            else:
                settle(batch, None)

    async def run(self) -> None:
        await asyncio.Event().wait()


class IntervalSync:
    """`interval`: answered at once; a periodic fdatasync bounds what a power cut loses."""

    def __init__(self, fd: FdSource, interval_s: float) -> None:
        self._fd, self._interval_s = fd, interval_s

    async def durable(self) -> None:
        return None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            with contextlib.suppress(OSError):
                await sync(self._fd())


class NoSync:
    """`never`: the page cache holds it; survives a process crash, not a power cut."""

    async def durable(self) -> None:
        return None

    async def run(self) -> None:
        await asyncio.Event().wait()


async def sync(fd: int | None) -> None:
    """fdatasync in a thread, on a duplicate so that a segment rotation may close `fd` meanwhile.

    The fd is taken after the batch's appends; a rotation in between has already
    fsynced the segment it sealed, so syncing the current segment covers the rest.
    """
    if fd is None:
        return
    duplicate = os.dup(fd)
    try:
        await asyncio.to_thread(os.fdatasync, duplicate)
    finally:
        os.close(duplicate)


def settle(waiters: list[asyncio.Future[None]], error: OSError | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


def policy(mode: str, fd: FdSource, interval_ms: int) -> Durability:
    if mode == "always":
        return GroupCommit(fd)
    if mode == "interval":
        return IntervalSync(fd, interval_ms / 1000)
    return NoSync()
