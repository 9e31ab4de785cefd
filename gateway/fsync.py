"""When a spooled record counts as durable: the `spool.fsync` policies.

A policy belongs to the spool (`Spool.durable` asks it); it syncs through the spool's
`sync`, which fdatasyncs whatever segment is being appended to when it is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

FsyncMode = Literal["always", "interval", "never"]
Sync = Callable[[], Awaitable[None]]


class Durability(Protocol):
    async def durable(self) -> None:
        """Return once every record appended before the call is as durable as the policy says."""

    def close(self) -> None:
        """Drop pending work; the spool seals its segment durably itself when it closes."""


class GroupCommit:
    """`always`: one fdatasync covers every append waiting when it starts (group commit)."""

    def __init__(self, sync: Sync) -> None:
        self._sync = sync
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
                await self._sync()
            except OSError as exc:
                settle(batch, exc)
            else:
                settle(batch, None)

    def close(self) -> None:
        # Nothing to stop: a flush runs only while an append awaits it.
        return None


class IntervalSync:
    """`interval`: answered at once; an fdatasync at most `interval_s` after an append
    bounds what a power cut loses."""

    def __init__(self, sync: Sync, interval_s: float) -> None:
        self._sync, self._interval_s = sync, interval_s
        self._timer: asyncio.TimerHandle | None = None
        self._syncing: asyncio.Task[None] | None = None

    async def durable(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._start)

    def _start(self) -> None:
        self._timer = None
        self._syncing = asyncio.create_task(self._sync_quietly())

    async def _sync_quietly(self) -> None:
        # A failed sync has poisoned the spool (`Spool._sync`): every later append is
        # refused. What was answered before it is what the interval risks.
        with contextlib.suppress(OSError):
            await self._sync()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._syncing is not None:
            self._syncing.cancel()  # the thread finishes on a descriptor of its own


class NoSync:
    """`never`: the page cache holds it; survives a process crash, not a power cut."""

    async def durable(self) -> None:
        return None

    def close(self) -> None:
        return None


class SyncThread:
    """fdatasync off the event loop, in one long-lived thread fed by a queue.

    A flush costs two thread hand-offs whatever carries it; `asyncio.to_thread` adds an
    executor work item, a copied context and a chained future on top (about 110 us of CPU
    per flush against 80-95 us this way, fdatasync included).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def fdatasync(self, fd: int | None) -> None:
        """fdatasync `fd` on a duplicate: a segment rotation may close `fd` meanwhile, and a
        cancelled caller leaves the thread a descriptor of its own to close."""
        if fd is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[OSError | None] = loop.create_future()
        self._start()
        self._queue.put((os.dup(fd), loop, done))
        error = await done
        if error is not None:
            raise error

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spool-fsync", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            fd, loop, done = job
            error = _fdatasync_and_close(fd)
            # A loop closed meanwhile has no one left to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, done, error)

    def close(self) -> None:
        """Let the thread end once the syncs queued before are done."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None


Job = tuple[int, asyncio.AbstractEventLoop, "asyncio.Future[OSError | None]"]


def _fdatasync_and_close(fd: int) -> OSError | None:
    try:
        os.fdatasync(fd)
    except OSError as exc:
        return exc
    finally:
        os.close(fd)
    return None


def _resolve(done: asyncio.Future[OSError | None], error: OSError | None) -> None:
    if not done.done():  # its waiter may have been cancelled
        done.set_result(error)


def settle(waiters: list[asyncio.Future[None]], error: OSError | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


def policy(mode: FsyncMode, sync: Sync, interval_s: float) -> Durability:
    if mode == "always":
        return GroupCommit(sync)
    if mode == "interval":
        return IntervalSync(sync, interval_s)
    return NoSync()
