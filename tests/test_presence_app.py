"""The presence API over a real ledger, on SQLite and on PostgreSQL: every route, tokens,
problems, request ids, readiness and metrics; and a webhook through the gateway and the
built-in ledger worker to `GET /sessions/{id}`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consumers import testing
from consumers.__main__ import handler_for
from consumers.runner import Worker
from consumers.state import ConsumerState
from core.contract import Event
from core.settings import AmqpSettings, LedgerSettings, Settings
from devtools import pgnode
from devtools.rabbitnode import free_port
from ledger import ledger
from presence import openapi
from presence.app import create_app
from presence.handlers import STATE
from tests.support.consumer import Scratch, running
from tests.support.gateway import AUTH as GATEWAY_AUTH
from tests.support.waiting import eventually

Client = TestClient[web.Request, web.Application]
TOKEN: Final = "presence-test-token-9c1d"
AUTH: Final = {"Authorization": f"Bearer {TOKEN}"}
STORE, OTHER_STORE = 7, 8
PROBLEM_JSON: Final = "application/problem+json"


def presence_settings(ledger_settings: LedgerSettings, **presence: Any) -> Settings:
    base = {"tokens": {"downstream": TOKEN}, "retry_max_s": 0.1} | presence
    return Settings.model_validate(
        {"presence": base, "ledger": ledger_settings.model_dump(mode="json")}
    )


@contextlib.asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app(settings), host="127.0.0.1")) as client:
        yield client


def events() -> list[Event]:
    """Store 7: s1 inside, s2 came and went; store 8: s3 inside; two tracking matches."""
    made = [
        testing.transition("entered", STORE, "s1"),
        testing.transition("entered", STORE, "s2"),
        testing.transition("exited", STORE, "s2"),
        testing.transition("entered", OTHER_STORE, "s3"),
        testing.tracking(STORE, "u-matched", "p-1"),
        testing.tracking(STORE, "u-waiting", None),
    ]
    return [Event.from_body(outbound.body) for outbound in made]


@pytest.fixture
async def api(ledger_settings: LedgerSettings) -> AsyncIterator[Client]:
    """The API over a ledger that the workers filled with `events()`."""
    async with ledger.opened(ledger_settings) as writer:
        await writer.apply(events())
    async with started(presence_settings(ledger_settings)) as client:
        yield client


async def get_json(client: Client, path: str, status: int = 200) -> Any:
    response = await client.get(path, headers=AUTH)
    assert response.status == status, await response.text()
    return await response.json(content_type=None)


async def answers(client: Client, path: str, status: int) -> bool:
    return (await client.get(path, headers=AUTH)).status == status


def assert_problem(body: dict[str, Any], status: int) -> None:
    assert body["status"] == status
    assert {"type", "title", "detail"} <= set(body)


async def test_stores_gives_occupancy_open_sessions_and_sessions_per_store(api: Client) -> None:
    assert await get_json(api, "/stores") == {
        "occupancy": 2,
        "stores": [
            {"storeId": STORE, "occupancy": 1, "openSessions": 1, "sessions": 2},
            {"storeId": OTHER_STORE, "occupancy": 1, "openSessions": 1, "sessions": 1},
        ],
    }


async def test_one_store(api: Client) -> None:
    assert await get_json(api, f"/stores/{STORE}") == {
        "storeId": STORE,
        "occupancy": 1,
        "openSessions": 1,
        "sessions": 2,
    }


async def test_a_store_without_visits_is_a_404_problem(api: Client) -> None:
    response = await api.get("/stores/9", headers=AUTH)
    assert response.status == 404
    assert response.content_type == PROBLEM_JSON
    assert_problem(await response.json(content_type=None), 404)


@pytest.mark.parametrize("store_id", ["seven", "7.0", "0x7", "9223372036854775808", "%207"])
async def test_a_store_id_that_is_no_64_bit_integer_is_a_422_problem(
    api: Client, store_id: str
) -> None:
    response = await api.get(f"/stores/{store_id}", headers=AUTH)
    assert response.status == 422
    assert response.content_type == PROBLEM_JSON
    assert_problem(await response.json(content_type=None), 422)


async def test_a_session_is_its_visit(api: Client) -> None:
    visit = await get_json(api, "/sessions/s2")
    assert visit["sessionId"] == "s2"
    assert (visit["storeId"], visit["personsEntered"], visit["personsExited"]) == (STORE, 1, 1)
    assert visit["occupancy"] == 0
    assert visit["firstEntered"] == visit["lastExited"] == "2024-05-01T12:00:00.000000Z"
    assert visit["customerId"] == "c-s2"


async def test_an_unknown_session_is_a_404_problem(api: Client) -> None:
    assert_problem(await get_json(api, "/sessions/nobody", 404), 404)


async def test_tracking_says_whether_a_shopper_is_matched(api: Client) -> None:
    matched = await get_json(api, "/tracking/u-matched")
    assert (matched["shopperId"], matched["matched"]) == ("p-1", True)
    waiting = await get_json(api, "/tracking/u-waiting")
    assert (waiting["shopperId"], waiting["matched"]) == (None, False)
    assert_problem(await get_json(api, "/tracking/u-unknown", 404), 404)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["none", "wrong", "not-bearer"],
)
@pytest.mark.parametrize("path", ["/stores", "/stores/7", "/sessions/s1", "/tracking/u-matched"])
async def test_every_read_needs_a_valid_bearer_token(
    api: Client, path: str, headers: dict[str, str]
) -> None:
    response = await api.get(path, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert_problem(await response.json(content_type=None), 401)


async def test_no_token_reaches_the_log_or_an_answer(
    api: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    refused = await api.get("/stores", headers={"Authorization": f"Bearer {TOKEN}x"})
    accepted = await api.get("/stores", headers=AUTH)
    assert (refused.status, accepted.status) == (401, 200)
    assert TOKEN not in await refused.text()
    assert TOKEN not in caplog.text


async def test_probes_metrics_and_the_document_need_no_token(api: Client) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert (await api.get(path)).status == 200, path
    assert await (await api.get("/healthz")).json() == {"status": "alive"}


async def test_the_request_id_is_echoed_or_made_up_on_every_answer(api: Client) -> None:
    echoed = await api.get("/stores", headers=AUTH | {"X-Request-Id": "trace-42"})
    assert echoed.headers["X-Request-Id"] == "trace-42"
    made_up = [
        await api.get("/stores", headers=AUTH),
        await api.get("/stores"),  # 401
        await api.get("/nowhere", headers=AUTH),  # aiohttp's own 404
        await api.post("/stores", headers=AUTH),  # aiohttp's own 405
        await api.get("/stores/x", headers=AUTH),  # 422
    ]
    ids = [response.headers["X-Request-Id"] for response in made_up]
    assert all(len(i) == 32 for i in ids)
    assert len(set(ids)) == len(ids)


async def test_aiohttps_own_404_and_405_are_problems_and_405_keeps_allow(api: Client) -> None:
    missing = await api.get("/nowhere", headers=AUTH)
    assert (missing.status, missing.content_type) == (404, PROBLEM_JSON)
    assert_problem(await missing.json(content_type=None), 404)
    wrong_method = await api.delete("/stores/7", headers=AUTH)
    assert (wrong_method.status, wrong_method.content_type) == (405, PROBLEM_JSON)
    assert "GET" in wrong_method.headers["Allow"]
    assert_problem(await wrong_method.json(content_type=None), 405)


async def test_metrics_count_requests_by_route_and_status(api: Client) -> None:
    await api.get("/stores/7", headers=AUTH)
    await api.get("/stores/9", headers=AUTH)
    await api.get("/stores/9", headers=AUTH)
    await api.get("/nowhere/at/all", headers=AUTH)
    text = await (await api.get("/metrics")).text()
    assert 'aifi_presence_requests_total{route="/stores/{storeId}",status="200"} 1.0' in text
    assert 'aifi_presence_requests_total{route="/stores/{storeId}",status="404"} 2.0' in text
    assert 'aifi_presence_requests_total{route="unmatched",status="404"} 1.0' in text
    assert 'aifi_presence_request_duration_seconds_count{route="/stores/{storeId}"} 3.0' in text
    assert "/nowhere" not in text


async def test_metrics_report_each_stores_occupancy_as_the_ledger_says(api: Client) -> None:
    stores = (await get_json(api, "/stores"))["stores"]
    text = await (await api.get("/metrics")).text()
    for each in stores:
        store = "none" if each["storeId"] is None else each["storeId"]
        assert f'aifi_ledger_occupancy{{store="{store}"}} {float(each["occupancy"])}' in text
    assert stores


async def test_the_document_is_served(api: Client) -> None:
    served = await (await api.get("/openapi.json")).json()
    assert served == orjson.loads(orjson.dumps(openapi.document()))


async def test_ready_when_the_ledger_is_open(api: Client) -> None:
    response = await api.get("/readyz")
    body = await response.json()
    assert (response.status, body["ready"]) == (200, True)


async def test_not_ready_on_a_postgresql_that_does_not_answer() -> None:
    closed = LedgerSettings(url=f"postgresql://aifi:secret@127.0.0.1:{free_port()}/aifi")
    async with started(presence_settings(closed)) as client:
        response = await client.get("/readyz")
        body = await response.json()
        assert (response.status, body["ready"]) == (503, False)
        assert body["reason"]
        assert "secret" not in await response.text()
        read = await client.get("/stores", headers=AUTH)
        assert read.status == 503
        assert read.headers["Retry-After"]
        assert_problem(await read.json(content_type=None), 503)


async def test_ready_once_a_worker_creates_the_sqlite_ledger(tmp_path: Path) -> None:
    """Started before any worker, it waits for the ledger, never creating it."""
    settings = LedgerSettings(db=tmp_path / "data" / "ledger.sqlite3")
    async with started(presence_settings(settings)) as client:
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/sessions/s1", headers=AUTH)).status == 503
        assert not settings.db.exists()
        async with ledger.opened(settings) as writer:
            await writer.apply(events())
        await eventually(lambda: answers(client, "/readyz", 200), what="/readyz to say ready")
        assert (await get_json(client, "/sessions/s1"))["personsEntered"] == 1


async def test_a_sqlite_ledger_that_fails_a_read_is_a_503_not_a_500(tmp_path: Path) -> None:
    settings = LedgerSettings(db=tmp_path / "ledger.sqlite3")
    async with ledger.opened(settings) as writer:
        await writer.apply(events())
    async with started(presence_settings(settings)) as client:
        await eventually(lambda: answers(client, "/readyz", 200), what="/readyz to say ready")
        # A real failure of the database under an open reader: the table it reads is gone.
        with contextlib.closing(sqlite3.connect(settings.db)) as other, other:
            other.execute("DROP TABLE visits")
        response = await client.get("/sessions/s1", headers=AUTH)
        assert response.status == 503
        assert_problem(await response.json(content_type=None), 503)


async def test_not_ready_once_postgresql_goes_away(private_pg: pgnode.PgNode) -> None:
    """The database answering at start and then not: /readyz and the reads turn 503."""
    settings = LedgerSettings(url=private_pg.url, timeout_s=1)
    async with ledger.opened(settings) as writer:
        await writer.apply(events())
    async with started(presence_settings(settings, ready_timeout_s=1)) as client:
        assert (await client.get("/readyz")).status == 200
        assert (await client.get("/stores", headers=AUTH)).status == 200
        await asyncio.to_thread(private_pg.stop, "immediate")
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/stores", headers=AUTH)).status == 503


async def test_a_webhook_through_the_gateway_and_the_ledger_worker_is_a_visit(
    client: Client,
    amqp_url: str,
    scratch: Scratch,
    ledger_settings: LedgerSettings,
    examples: dict[str, bytes],
    store: int,
) -> None:
    session = f"e2e-{uuid.uuid4().hex}"
    body = orjson.loads(examples["entered"])
    body |= {"sessionId": session, "storeId": store}
    body["session"]["sessionId"] = session
    name, consumer = scratch.consumer(f"entered.{store}")
    settings = Settings.model_validate(
        {"amqp": {"urls": [amqp_url]}, "ledger": ledger_settings.model_dump(mode="json")}
    )
    state, stop = ConsumerState(name), asyncio.Event()
    async with handler_for(consumer, settings, state, stop) as handler:
        worker = Worker(name, consumer, AmqpSettings(urls=(amqp_url,)), handler, state)
        async with running(worker):
            posted = await client.post(
                "/webhooks/aifi/entered", data=orjson.dumps(body), headers=GATEWAY_AUTH
            )
            assert posted.status == 200, await posted.text()
            async with started(presence_settings(ledger_settings)) as api:
                path = f"/sessions/{session}"
                await eventually(lambda: answers(api, path, 200), what=f"{path} to answer")
                visit = await get_json(api, f"/sessions/{session}")
    assert (visit["storeId"], visit["personsEntered"], visit["occupancy"]) == (store, 1, 1)


async def test_an_unexpected_error_is_a_500_problem_logged_with_the_request_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = presence_settings(LedgerSettings(db=tmp_path / "ledger.sqlite3"))
    async with started(settings) as client:
        assert client.app is not None

        def broken() -> None:
            raise RuntimeError("broken on purpose")

        monkeypatch.setattr(client.app[STATE].reader, "current", broken)
        with caplog.at_level(logging.ERROR, logger="presence.app"):
            response = await client.get("/stores", headers=AUTH | {"X-Request-Id": "r-500"})
        assert response.status == 500
        assert response.content_type == PROBLEM_JSON
        assert response.headers["X-Request-Id"] == "r-500"
        assert_problem(await response.json(content_type=None), 500)
    [record] = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert record.__dict__["request_id"] == "r-500"
    assert record.exc_info is not None
