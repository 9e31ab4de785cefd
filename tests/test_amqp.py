"""The reconnect loop the gateway and the workers share: URLs in turn, backoff, logs, ends."""

from __future__ import annotations

import asyncio
import logging

import aiormq
import pytest

from core.amqp import reconnecting

URLS = ("amqp://guest:secret@first/", "amqp://guest:secret@second/")
CAP_S = 0.01


class Script:
    """A session that fails or returns as planned, recording the URL of every call."""

    def __init__(self, *plan: Exception | None) -> None:
        self.plan = list(plan)
        self.urls: list[str] = []
        self.done = asyncio.Event()

    async def __call__(self, url: str) -> None:
        self.urls.append(url)
        if not self.plan:
            self.done.set()
            await asyncio.Event().wait()  # connected for good
        if (failure := self.plan.pop(0)) is not None:
            raise failure


async def test_urls_are_tried_in_turn_and_every_failure_is_told_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = Script(ConnectionRefusedError(), None, ValueError("bug"))
    failures: list[Exception] = []
    reconnects: list[None] = []
    loop = asyncio.create_task(
        reconnecting(
            URLS,
            session,
            CAP_S,
            on_failure=failures.append,
            on_reconnect=lambda: reconnects.append(None),
            log_extra={"consumer": "entered"},
        )
    )
    with caplog.at_level(logging.WARNING, logger="core.amqp"):
        await asyncio.wait_for(session.done.wait(), 5)
    loop.cancel()
    await asyncio.wait([loop])
    assert session.urls == [*URLS, *URLS]
    assert [type(f) for f in failures] == [ConnectionRefusedError, ValueError]
    assert len(reconnects) == 3
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "amqp connection failed"),
        ("ERROR", "amqp session broke unexpectedly"),
    ]
    for record in caplog.records:
        assert record.__dict__["consumer"] == "entered"
        assert "secret" not in record.__dict__["url"]


async def test_a_topology_that_differs_names_the_migration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = Script(aiormq.exceptions.ChannelPreconditionFailed("x-queue-type"))
    loop = asyncio.create_task(reconnecting(URLS, session, CAP_S))
    with caplog.at_level(logging.ERROR, logger="core.amqp"):
        await asyncio.wait_for(session.done.wait(), 5)
    loop.cancel()
    await asyncio.wait([loop])
    assert "aifi-consumer migrate" in caplog.records[0].getMessage()


async def test_setting_stop_ends_the_loop_in_its_pause() -> None:
    stop = asyncio.Event()

    async def session(url: str) -> None:
        stop.set()  # a session sees the stop and returns by itself
        raise ConnectionResetError

    await asyncio.wait_for(reconnecting(URLS, session, 60, stop=stop), 5)


async def test_a_fatal_error_ends_the_loop() -> None:
    session = Script(ConnectionRefusedError(), LookupError("no such queue"))
    with pytest.raises(LookupError):
        await asyncio.wait_for(reconnecting(URLS, session, CAP_S, fatal=(LookupError,)), 5)
    assert session.urls == list(URLS)


async def test_a_cancellation_turned_into_an_error_still_ends_the_loop() -> None:
    """What Python 3.11's `wait_for` does when the connection attempt fails as it is cancelled."""
    connecting, stop = asyncio.Event(), asyncio.Event()

    async def session(url: str) -> None:
        connecting.set()
        try:
            await asyncio.sleep(CAP_S)
        except asyncio.CancelledError:
            raise ConnectionRefusedError from None

    loop = asyncio.create_task(reconnecting(URLS, session, CAP_S, stop=stop))
    await connecting.wait()
    loop.cancel()
    try:
        await asyncio.wait([loop], timeout=5)
        assert loop.cancelled(), "the loop went on after its task was cancelled"
    finally:
        stop.set()  # ends a loop that went on
        await asyncio.wait([loop], timeout=5)
