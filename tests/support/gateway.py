"""A gateway for a test: its token, its settings, and one in this process (`started_client`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from core.settings import Settings
from gateway.app import PIPELINE, create_app

CONFIG: Final = Path(__file__).resolve().parents[2] / "config.yaml"
TOKEN: Final = "test-token-0f5e2a"
# Unique per test run, so that a capture (`broker.Capture`) can tell this run's messages
# from those of anything else publishing on a shared broker.
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
        # No consumer's queues: a test that wants some names its own.
        "consumers": {},
    }
    for key, value in overrides.items():
        base[key] = base.get(key, {}) | value if isinstance(value, dict) else value
    return Settings.model_validate(base)


Client = TestClient[web.Request, web.Application]


async def started_client(settings: Settings) -> AsyncIterator[Client]:
    """A gateway on a loopback port, yielded once it is connected to the broker."""
    app = create_app(settings)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        await asyncio.wait_for(app[PIPELINE].publisher.wait_ready(), 10)
        yield client
