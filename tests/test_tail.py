"""`aifi-gateway tail`: what reaches the exchange on its binding, one line per event, as the
command prints it against the session's broker; Ctrl-C ends it quietly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractChannel

from core import contract
from core.contract import Outbound
from tests.support.broker import publish
from tests.support.gateway import CONFIG
from tests.support.processes import GATEWAY_ARGV, child_environ

LINE_TIMEOUT_S = 30.0


@contextlib.asynccontextmanager
async def tailing(amqp_url: str, binding: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`aifi-gateway tail --binding binding`, once it says it waits (its queue is bound);
    Ctrl-C at the end, and its whole process group killed after, whatever happened."""
    env = child_environ() | {"AIFI_CONFIG": str(CONFIG), "AIFI_AMQP_URL": amqp_url}
    process = await asyncio.create_subprocess_exec(
        *GATEWAY_ARGV,
        "tail",
        "--binding",
        binding,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        process_group=0,
    )
    try:
        waiting = await read_line(process.stderr)
        assert waiting == f"tail: waiting for events on {contract.EXCHANGE} ({binding})"
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError, TimeoutError):
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(process.communicate(), LINE_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def read_line(stream: asyncio.StreamReader | None) -> str:
    assert stream is not None
    line = await asyncio.wait_for(stream.readline(), LINE_TIMEOUT_S)
    assert line.endswith(b"\n"), f"the stream ended: {line!r}"
    return line.decode().rstrip("\n")


def event(routing_key: str, body: bytes) -> Outbound:
    return Outbound(
        str(uuid.uuid4()), routing_key, body, contract.EVENT_CONTENT_TYPE, 1_700_000_000
    )


async def test_it_prints_what_matches_its_binding_one_line_each_in_order(
    amqp_url: str, channel: AbstractChannel, store: int
) -> None:
    # The first event does not match the binding: a tail of everything would print it first.
    sent = [
        event(f"exited.{store}", b'{"n": 0}'),
        event(f"entered.{store}", b'{"n": 1}'),
        event(f"entered.{store}", b'{"n": 2, "bad": "\xff"}'),
    ]
    async with tailing(amqp_url, f"entered.{store}") as process:
        await publish(channel, sent)
        printed = [await read_line(process.stdout) for _ in range(2)]
    assert printed == [
        f"entered.{store} {sent[1].message_id} " + '{"n": 1}',
        # A body that is not UTF-8 is still printed, its bad bytes replaced.
        f"entered.{store} {sent[2].message_id} " + '{"n": 2, "bad": "\ufffd"}',
    ]


async def test_ctrl_c_ends_it_with_status_0_and_no_traceback(amqp_url: str, store: int) -> None:
    async with tailing(amqp_url, f"tracking.{store}") as process:
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), LINE_TIMEOUT_S)
        assert process.returncode == 0
        assert b"Traceback" not in stderr
