"""What a worker is doing, and a tiny HTTP endpoint that reports it: `GET /healthz`."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class ConsumerState:
    """Written by the worker, read by the endpoint; one instance per worker."""

    consumer: str
    connected: bool = False
    consuming: bool = False
    reconnects: int = 0
    batches: int = 0
    received: int = 0
    redelivered: int = 0  # deliveries the broker had handed out before: crash recovery
    acked: int = 0
    retried: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)

    def snapshot(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def create_app(state: ConsumerState) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        # 503 while not consuming, so that an orchestrator's probe sees a worker that waits
        # for the broker as unhealthy rather than as fine.
        return web.Response(
            body=orjson.dumps(state.snapshot()),
            status=200 if state.consuming else 503,
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    return app


@contextlib.asynccontextmanager
async def serving(state: ConsumerState, host: str, port: int) -> AsyncIterator[None]:
    """Serve `/healthz` on `host:port` for the duration of the block; port 0 serves nothing."""
    if not port:
        yield
        return
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()
