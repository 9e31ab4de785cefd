"""Slow clients: a trickled head or body is cut off in time and holds nothing up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from devtools.rabbitnode import free_port
from tests.support.gateway import AUTH, TOKEN, gateway_env
from tests.support.processes import GatewayProcess

pytestmark = pytest.mark.slow  # a fault, fuzz or load suite: not in `make test-fast`

TIMEOUT_S = 3.0
# How long a client trickles before it gives up itself: far beyond the gateway's timeouts,
# so that only the gateway ends a connection in these tests.
GIVE_UP_S = 60.0
ENTERED = "/webhooks/aifi/entered"


@pytest.fixture
def gateway(amqp_url: str, tmp_path: Path) -> Iterator[GatewayProcess]:
    env = gateway_env(
        amqp_url,
        tmp_path / "spool",
        AIFI_HTTP_HEADER_TIMEOUT_S=str(TIMEOUT_S),
        AIFI_HTTP_BODY_TIMEOUT_S=str(TIMEOUT_S),
    )
    process = GatewayProcess(free_port(), env, tmp_path / "gateway.log")
    process.start()
    yield process
    process.stop()


async def trickle(port: int, head: bytes, drip: bytes) -> tuple[bytes, bool]:
    """Send `head`, then `drip` once a tenth of a second, until the gateway ends the
    connection (or `GIVE_UP_S` passed); what came back, and whether the gateway ended it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(head)
    answer = b""
    try:
        while time.monotonic() - started < GIVE_UP_S and not reader.at_eof():
            writer.write(drip)
            await writer.drain()
            try:
                answer += await asyncio.wait_for(reader.read(4096), 0.1)
            except TimeoutError:
                continue
    except ConnectionError:
        return answer, True
    finally:
        writer.close()
    return answer, reader.at_eof()


async def test_a_trickled_head_is_cut_off(gateway: GatewayProcess) -> None:
    head = f"POST {ENTERED} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    answer, cut_off = await trickle(gateway.port, head, b"X-Slow: 1\r\n")
    assert cut_off, "the gateway let a head trickle in for ever"
    assert b"200" not in answer


async def test_a_trickled_body_gets_408_and_is_not_accepted(
    gateway: GatewayProcess, examples: dict[str, bytes]
) -> None:
    length = len(examples["entered"])
    head = (
        f"POST {ENTERED} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    answer, cut_off = await trickle(gateway.port, head, b" ")
    assert answer.startswith(b"HTTP/1.1 408")
    assert cut_off


async def test_slow_clients_do_not_hold_up_others(
    gateway: GatewayProcess, examples: dict[str, bytes]
) -> None:
    head = f"POST {ENTERED} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    slow = [asyncio.create_task(trickle(gateway.port, head, b"X: 1\r\n")) for _ in range(20)]
    async with aiohttp.ClientSession() as session:
        url = f"{gateway.url}{ENTERED}"
        async with session.post(url, data=examples["entered"], headers=AUTH) as response:
            assert response.status == 200
        # Answered while every slow client still holds its connection: it waited for none.
        assert not any(task.done() for task in slow)
    assert all(cut_off for _, cut_off in await asyncio.gather(*slow))
