"""Consumers for a test: queues no other test uses, and a worker consuming for a block."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika

from consumers import topology
from consumers.runner import Worker
from core.settings import ConsumerSettings
from tests.support.waiting import eventually


@contextlib.asynccontextmanager
async def running(worker: Worker, timeout_s: float = 10.0) -> AsyncIterator[asyncio.Task[None]]:
    """`worker` consuming in the background for the block, then stopped gracefully."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    def consuming() -> bool:
        if task.done():
            task.result()
        return worker.state.consuming

    try:
        await eventually(consuming, timeout_s, f"{worker.name} to consume")
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout_s)


class Scratch:
    """Consumers with names no one else uses, made for one test from `base` settings;
    `delete` removes their queues."""

    def __init__(self, url: str, base: ConsumerSettings) -> None:
        self.url = url
        self._base = base
        self._made: list[tuple[str, ConsumerSettings]] = []

    def consumer(self, *bindings: str, **overrides: Any) -> tuple[str, ConsumerSettings]:
        name = f"t{uuid.uuid4().hex[:16]}"
        settings = ConsumerSettings.model_validate(
            self._base.model_dump() | overrides | {"bindings": bindings}
        )
        self._made.append((name, settings))
        return name, settings

    async def delete(self) -> None:
        connection = await aio_pika.connect(self.url)
        async with connection, connection.channel() as channel:
            for name, settings in self._made:
                await topology.delete(channel, name, settings)

    async def delete_named(self, name: str) -> None:
        """The queues of a consumer `name` made elsewhere (a worker process's) from `base`."""
        self._made.append((name, self._base))
        await self.delete()
