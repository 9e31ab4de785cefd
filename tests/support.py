"""Helpers shared by the tests: settings for a test gateway and a capturing queue."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from core import contract
from core.contract import Outbound
from core.settings import Settings
from gateway.app import PIPELINE, create_app

CONFIG: Final = Path(__file__).resolve().parent.parent / "config.yaml"
TOKEN: Final = "test-token-0f5e2a"
# Unique per test run, so that a capture can tell this run's messages from those of
# anything else publishing on a shared broker.
TOKEN_NAME: Final = f"aifi-test-{uuid.uuid4().hex[:8]}"
AUTH: Final = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def gateway_env(amqp_url: str, spool_dir: Path, **settings: str) -> dict[str, str]:
    """Environment for a gateway subprocess; `settings` are extra AIFI_* variables."""
    return {
        "AIFI_CONFIG": str(CONFIG),
        "AIFI_AMQP_URL": amqp_url,
        "AIFI_TOKENS": f"{TOKEN_NAME}={TOKEN}",
        "AIFI_SPOOL_DIR": str(spool_dir),
        "AIFI_LOG_LEVEL": "WARNING",
    } | settings


def gateway_settings(amqp_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "http": {"host": "127.0.0.1", "port": 0},
        "auth": {"tokens": {TOKEN_NAME: TOKEN}},
        "amqp": {"urls": [amqp_url], "publish_timeout_s": 5},
        "spool": {"dir": str(tmp_path / "spool")},
    }
    for key, value in overrides.items():
        base[key] = base.get(key, {}) | value if isinstance(value, dict) else value
    return Settings.model_validate(base)


def capturable(
    message_id: str,
    routing_key: str = "invalid.entered",
    content_type: str = contract.EVENT_CONTENT_TYPE,
) -> Outbound:
    """A message shaped like a quarantined request of this run, so that `Capture` keeps it."""
    headers: contract.Headers = {contract.TOKEN_NAME_HEADER: TOKEN_NAME}
    return Outbound(message_id, routing_key, b"{}", content_type, 1_700_000_000, headers)


def token_name_of(message: AbstractIncomingMessage) -> str:
    """The token name a gateway stamped on a message, or "" if it is not one of ours."""
    if contract.TOKEN_NAME_HEADER in message.headers:
        return str(message.headers[contract.TOKEN_NAME_HEADER])
    try:
        return str(contract.decode_event(message.body)["data"].get("tokenName"))
    except ValueError:
        return ""


class Capture:
    """Messages arriving on one queue bound to the events exchange."""

    def __init__(self, queue: AbstractQueue) -> None:
        self.queue = queue
        self.received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    @classmethod
    @contextlib.asynccontextmanager
    async def bound(
        cls, channel: AbstractChannel, name: str, binding: str
    ) -> AsyncIterator[Capture]:
        # Exclusive: RabbitMQ 4.3 refuses a transient queue other connections could use.
        queue = await channel.declare_queue(name, exclusive=True)
        await queue.bind(contract.EXCHANGE, binding)
        capture = cls(queue)
        tag = await queue.consume(capture._on_message, no_ack=True)
        try:
            yield capture
        finally:
            await queue.cancel(tag)
            await queue.delete(if_unused=False, if_empty=False)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if token_name_of(message).startswith(TOKEN_NAME):
            await self.received.put(message)

    async def get(self, timeout_s: float = 5.0) -> AbstractIncomingMessage:
        return await asyncio.wait_for(self.received.get(), timeout_s)

    async def nothing_more(self, wait_s: float = 0.3) -> bool:
        await asyncio.sleep(wait_s)
        return self.received.empty()


Client = TestClient[web.Request, web.Application]


async def started_client(settings: Settings) -> AsyncIterator[Client]:
    """A gateway on a loopback port, yielded once it is connected to the broker."""
    app = create_app(settings)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        await asyncio.wait_for(app[PIPELINE].publisher.wait_ready(), 10)
        yield client
