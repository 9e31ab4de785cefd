"""What the bench measures besides the load: peak RSS, and events arriving in RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aio_pika.abc import AbstractChannel

from core.amqp import declare_topology
from tests.support import broker

POLL_S: Final = 0.05
QUEUE_PREFIX: Final = "bench.e2e."


def vm_hwm_bytes(pid: int) -> int | None:
    """A process's high-water mark of resident memory (VmHWM), None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    return None


def stat_fields(pid: int) -> list[str] | None:
    """Fields 3 on of /proc/<pid>/stat (field n at index n - 3); None if `pid` is gone."""
    try:
        # After the last `)`: the command name before it may hold spaces and parentheses.
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def parent_pids() -> dict[int, int]:
    """pid -> parent pid (field 4) of every process now."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        pid = int(stat.parent.name)
        fields = stat_fields(pid)
        if fields is not None:  # else it exited while we looked
            parents[pid] = int(fields[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a gateway with `http.processes` > 1 forks them)."""
    parents = parent_pids()
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree.extend(frontier)
    return tree


def peak_rss_bytes(pid: int) -> int | None:
    """Peak RSS of the server: the sum of the VmHWM of its processes, None if it is gone.

    With several processes the sum of their peaks bounds the peak of their sum from above.
    """
    peaks = [vm_hwm_bytes(p) for p in process_tree(pid)]
    return sum(p for p in peaks if p is not None) if peaks[0] is not None else None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU so far of `pid` and its descendants; None if it is gone.

    Less noisy than a rate on a shared machine: what a request costs, not how
    much CPU others left over.
    """
    ticks = 0
    for p in process_tree(pid):
        fields = stat_fields(p)
        if fields is None and p == pid:
            return None
        if fields is not None:  # else a child that exited: its time is gone with it
            ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Arrival:
    """How many events the queue held when the wait ended, and when the last one arrived."""

    count: int
    at: float  # time.monotonic()


class EventQueue:
    """A fresh durable queue on the exchange: it counts every event its binding matches."""

    def __init__(self, channel: AbstractChannel, name: str) -> None:
        self._channel, self.name = channel, name

    @classmethod
    @contextlib.asynccontextmanager
    async def bound(cls, channel: AbstractChannel, binding: str) -> AsyncIterator[EventQueue]:
        """The queue for the duration of the block; purged and deleted after, whatever happens."""
        exchange = await declare_topology(channel)  # a fresh broker has no exchange yet
        name = f"{QUEUE_PREFIX}{uuid.uuid4().hex[:12]}"
        queue = await channel.declare_queue(name, durable=True)
        try:
            await queue.bind(exchange, routing_key=binding)
            yield cls(channel, name)
        finally:
            await queue.purge()
            await queue.delete(if_unused=False, if_empty=False)

    async def count(self) -> int:
        """Messages in the queue now (no consumer, so every one routed and not purged)."""
        return await broker.depth(self._channel, self.name)

    async def wait_for(self, target: int, timeout_s: float, quiet_s: float) -> Arrival:
        """Poll until `target` events arrived, none came for `quiet_s`, or `timeout_s` passed."""
        start = time.monotonic()
        last_count, last_change = await self.count(), start
        while last_count < target:
            now = time.monotonic()
            if now - last_change > quiet_s or now - start > timeout_s:
                break
            await asyncio.sleep(POLL_S)
            count = await self.count()
            if count != last_count:
                last_count, last_change = count, time.monotonic()
        # The poll that saw the count change is when the last counted event arrived.
        return Arrival(last_count, last_change)
