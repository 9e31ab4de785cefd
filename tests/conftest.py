"""Fixtures: the real broker, a gateway on a loopback port, and per-test queues."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aio_pika
import pytest
from _pytest.terminal import TerminalReporter
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiohttp import web
from aiohttp.test_utils import TestClient

from consumers import testing
from core.amqp import declare_topology
from core.settings import Settings
from devtools.loadcheck import Verdict
from devtools.rabbitnode import amqp_reachable
from tests.support import Capture, gateway_settings, started_client

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The broker `make test` started; its absence fails the run loudly, never skips it."""
    url = os.environ.get("AIFI_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/").split(",")[0]
    if not amqp_reachable(url):
        pytest.fail(f"no RabbitMQ at {url}: run the suite with `make test`", pytrace=False)
    return url


@pytest.fixture
def examples() -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in EXAMPLES.glob("*.json")}


@pytest.fixture
async def channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    connection: AbstractConnection = await aio_pika.connect(amqp_url)
    async with connection, connection.channel() as channel:
        await declare_topology(channel)
        yield channel


@pytest.fixture
async def capture(channel: AbstractChannel) -> AsyncIterator[Capture]:
    """A unique queue bound to `#`, deleted after the test."""
    async with Capture.bound(channel, f"test.{uuid.uuid4().hex}", "#") as cap:
        yield cap


@pytest.fixture
def store() -> int:
    """A store id no other test uses, so that routing keys are this test's own."""
    return random.randrange(10**6, 10**9)


@pytest.fixture
async def scratch(amqp_url: str, request: pytest.FixtureRequest) -> AsyncIterator[testing.Scratch]:
    """Queues of a consumer of this test's own, with its module's `BASE` settings."""
    made = testing.Scratch(amqp_url, request.module.BASE)
    yield made
    await made.delete()


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Settings:
    return gateway_settings(amqp_url, tmp_path)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The gateway on a loopback port, connected to the broker."""
    async for started in started_client(settings):
        yield started


CHECKER_VERDICTS = pytest.StashKey[list[tuple[str, dict[str, int]]]]()


@pytest.fixture
def checker_report(request: pytest.FixtureRequest) -> Callable[[str, Verdict], None]:
    """Keep a checker verdict for the summary at the end of the run, duplicates included."""
    verdicts = request.config.stash.setdefault(CHECKER_VERDICTS, [])

    def report(name: str, verdict: Verdict) -> None:
        verdicts.append((f"{request.node.name} [{name}]", verdict.summary()))

    return report


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    verdicts = config.stash.get(CHECKER_VERDICTS, [])
    if verdicts:
        terminalreporter.section("zero-loss checker")
        for name, summary in verdicts:
            terminalreporter.write_line(f"{name}: {summary}")
