"""The per-token rate limit: a token bucket under a fake clock, and 429 over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.ratelimit import RateLimiter
from tests.support.broker import Capture
from tests.support.gateway import AUTH, gateway_settings, started_client

Client = TestClient[web.Request, web.Application]


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_a_burst_passes_then_waits_for_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2, burst=3, clock=clock)
    assert [limiter.retry_after_s("a") for _ in range(4)] == [0, 0, 0, 1]
    clock.now_s += 0.5
    assert limiter.retry_after_s("a") == 0
    assert limiter.retry_after_s("a") == 1


def test_each_token_name_has_its_own_bucket() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1, clock=FakeClock())
    assert limiter.retry_after_s("a") == 0
    assert limiter.retry_after_s("b") == 0
    assert limiter.retry_after_s("a") >= 1


def test_retry_after_reflects_a_slow_rate() -> None:
    limiter = RateLimiter(rate_per_s=0.1, burst=1, clock=FakeClock())
    limiter.retry_after_s("a")
    assert limiter.retry_after_s("a") == 10


@pytest.fixture
async def limited(amqp_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    settings = gateway_settings(
        amqp_url, tmp_path, auth={"rate_limit_per_s": 0.5, "rate_limit_burst": 2}
    )
    async for client in started_client(settings):
        yield client


async def test_over_the_limit_is_429_with_retry_after_and_publishes_nothing(
    limited: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    statuses = []
    for _ in range(3):
        response = await limited.post(
            "/webhooks/aifi/entered", data=examples["entered"], headers=AUTH
        )
        statuses.append(response.status)
    assert statuses == [200, 200, 429]
    assert int(response.headers["Retry-After"]) >= 1
    await capture.get()
    await capture.get()
    assert await capture.nothing_more(limited)
