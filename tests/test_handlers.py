"""HTTP tests through a real loopback server, reading what reached a real queue."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import contract
from core.contract import Event
from core.settings import Settings
from tests.support.broker import Capture
from tests.support.gateway import AUTH, TOKEN, TOKEN_NAME, gateway_settings, started_client

Client = TestClient[web.Request, web.Application]
PATHS = {
    "entered": "/webhooks/aifi/entered",
    "left": "/webhooks/aifi/left",
    "exited": "/webhooks/aifi/exited",
    "tracking": "/webhooks/aifi/tracking",
}


async def post(client: Client, path: str, body: bytes, **headers: str) -> tuple[int, Any]:
    response = await client.post(path, data=body, headers=AUTH | headers)
    return response.status, orjson.loads(await response.read() or b"null")


@pytest.mark.parametrize(
    ("example", "path", "kind"),
    [
        ("entered", "entered", "entered"),
        ("left", "left", "exited"),
        ("left", "exited", "exited"),
        ("tracking", "tracking", "tracking"),
    ],
)
async def test_each_example_is_published_once_as_a_cloudevent(
    client: Client,
    capture: Capture,
    examples: dict[str, bytes],
    example: str,
    path: str,
    kind: str,
) -> None:
    status, body = await post(client, PATHS[path], examples[example])
    assert (status, body) == (200, "ok")
    message = await capture.get()
    event = Event.from_body(message.body)
    assert message.routing_key == f"{kind}.0"
    assert message.content_type == contract.EVENT_CONTENT_TYPE
    assert message.message_id == event.id
    assert message.delivery_mode == 2
    assert message.timestamp is not None
    assert event.type == contract.EVENT_TYPES[kind]  # type: ignore[index]
    assert event.time == "2019-08-24T14:15:22Z"
    assert event.data["tokenName"] == TOKEN_NAME
    assert event.data["payload"] == orjson.loads(examples[example])
    assert message.headers["cloudEvents_id"] == event.id
    assert message.headers["cloudEvents_type"] == event.type
    assert (
        message.headers[contract.FINGERPRINT_HEADER]
        == hashlib.sha256(examples[example]).hexdigest()
    )
    assert await capture.nothing_more(client)


async def test_twins_stay_two_events_sharing_a_fingerprint(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    for _ in range(2):
        assert (await post(client, PATHS["left"], examples["left"]))[0] == 200
    first, second = [Event.from_body((await capture.get()).body) for _ in range(2)]
    assert first.id != second.id
    assert first.data["fingerprint"] == second.data["fingerprint"]


async def test_redelivered_tracking_keeps_its_id(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    for _ in range(2):
        assert (await post(client, PATHS["tracking"], examples["tracking"]))[0] == 200
    ids = {Event.from_body((await capture.get()).body).id for _ in range(2)}
    assert len(ids) == 1


async def test_unknown_fields_are_kept(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    payload = orjson.loads(examples["entered"])
    payload["newTopLevel"] = {"nested": [1, 2]}
    payload["customer"]["loyaltyTier"] = "gold"
    status, _ = await post(client, PATHS["entered"], orjson.dumps(payload))
    event = Event.from_body((await capture.get()).body)
    assert status == 200
    assert event.data["payload"]["newTopLevel"] == {"nested": [1, 2]}
    assert event.data["payload"]["customer"]["loyaltyTier"] == "gold"


@pytest.mark.parametrize(
    ("example", "path", "field"),
    [
        ("entered", "entered", "session"),
        ("entered", "entered", "storeExternalId"),
        ("left", "left", "session"),
        ("tracking", "tracking", "shopperId"),
    ],
)
async def test_documented_nullable_fields_accept_null(
    client: Client,
    capture: Capture,
    examples: dict[str, bytes],
    example: str,
    path: str,
    field: str,
) -> None:
    payload = orjson.loads(examples[example])
    payload[field] = None
    status, _ = await post(client, PATHS[path], orjson.dumps(payload))
    event = Event.from_body((await capture.get()).body)
    assert status == 200
    assert event.data["payload"][field] is None


async def test_session_null_falls_back_to_top_level_session_id(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    payload = orjson.loads(examples["entered"])
    payload["session"] = None
    payload["sessionId"] = "top-level"
    await post(client, PATHS["entered"], orjson.dumps(payload))
    event = Event.from_body((await capture.get()).body)
    assert event.subject == event.data["sessionId"] == "top-level"


async def test_listed_http_headers_ride_on_the_event_only(
    amqp_url: str, tmp_path: Path, capture: Capture, examples: dict[str, bytes]
) -> None:
    settings = gateway_settings(
        amqp_url, tmp_path, http={"forward_headers": ["X-Request-Id", "X-Absent"]}
    )
    async for client in started_client(settings):
        await post(client, PATHS["tracking"], examples["tracking"], **{"X-Request-Id": "r-7"})
        await post(client, PATHS["tracking"], b"{oops", **{"X-Request-Id": "r-8"})
    event, kept = await capture.get(), await capture.get()
    prefix = contract.FORWARDED_HEADER_PREFIX
    forwarded = {name: v for name, v in event.headers.items() if name.startswith(prefix)}
    assert forwarded == {"aifi_http_x-request-id": "r-7"}
    assert kept.routing_key == "invalid.tracking"
    assert contract.forwarded_header("X-Request-Id") not in kept.headers


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic dGVzdA==", "Bearer "])
async def test_bad_or_missing_token_is_401_and_publishes_nothing(
    client: Client, capture: Capture, examples: dict[str, bytes], authorization: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = await client.post(PATHS["entered"], data=examples["entered"], headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert len(response.headers["X-Request-Id"]) == 32
    assert (await response.json(content_type=None))["status"] == 401
    assert await capture.nothing_more(client)


async def quarantined(capture: Capture) -> Any:
    message = await capture.get()
    assert message.routing_key is not None
    assert message.routing_key.startswith("invalid.")
    return message


async def test_invalid_json_is_400_and_quarantined_as_received(
    client: Client, capture: Capture
) -> None:
    raw = b'{"storeId": 1,, oops'
    status, body = await post(client, PATHS["entered"], raw)
    message = await quarantined(capture)
    assert status == 400
    assert body["detail"].startswith("invalid JSON: ")
    assert body["detail"].lower().count("json") == 1, body["detail"]
    assert message.body == raw
    assert message.routing_key == "invalid.entered"
    assert message.headers[contract.TOKEN_NAME_HEADER] == TOKEN_NAME
    assert "invalid JSON" in str(message.headers[contract.INVALID_REASON_HEADER])


async def test_schema_violation_is_422_naming_the_fields(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    payload = orjson.loads(examples["entered"])
    del payload["storeId"]
    payload["customer"]["role"] = "astronaut"
    raw = orjson.dumps(payload)
    status, body = await post(client, PATHS["entered"], raw)
    message = await quarantined(capture)
    assert status == 422
    assert {e["field"] for e in body["errors"]} >= {"storeId", "customer.role"}
    assert message.body == raw


async def test_missing_every_session_id_is_422(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    payload = orjson.loads(examples["entered"])
    payload["session"] = None
    del payload["sessionId"]
    status, _ = await post(client, PATHS["entered"], orjson.dumps(payload))
    assert status == 422
    assert (await quarantined(capture)).routing_key == "invalid.entered"


async def test_non_json_media_type_is_415_and_quarantined(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    status, _ = await post(
        client, PATHS["tracking"], examples["tracking"], **{"Content-Type": "text/plain"}
    )
    message = await quarantined(capture)
    assert status == 415
    assert message.routing_key == "invalid.tracking"
    assert message.body == examples["tracking"]


@pytest.mark.parametrize(
    "token",
    ["NaN", "-Infinity", "1e999", "1" + "0" * 400],
    ids=["NaN", "-Infinity", "1e999", "integer-of-401-digits"],
)
async def test_json_that_consumers_cannot_decode_is_400(
    client: Client, capture: Capture, examples: dict[str, bytes], token: str
) -> None:
    # pydantic-core takes these; orjson, which decodes events in the consumers, does not.
    raw = examples["tracking"].replace(b"{", b'{"confidence": ' + token.encode() + b",", 1)
    status, body = await post(client, PATHS["tracking"], raw)
    assert status == 400
    assert body["detail"].startswith("invalid JSON: ")
    assert (await quarantined(capture)).body == raw


@pytest.mark.parametrize("unique_event_id", ["", " "])
async def test_a_blank_unique_event_id_is_422(
    client: Client, capture: Capture, examples: dict[str, bytes], unique_event_id: str
) -> None:
    payload = orjson.loads(examples["tracking"]) | {"uniqueEventId": unique_event_id}
    status, body = await post(client, PATHS["tracking"], orjson.dumps(payload))
    assert status == 422
    assert [e["field"] for e in body["errors"]] == ["uniqueEventId"]
    assert (await quarantined(capture)).routing_key == "invalid.tracking"


@pytest.mark.parametrize(
    ("content_type", "said"),
    [
        (None, "no Content-Type"),
        ("", "no Content-Type"),
        ("text/plain; charset=utf-8", "got text/plain"),
        ("application/x-www-form-urlencoded", "got application/x-www-form-urlencoded"),
    ],
)
async def test_415_says_what_media_type_was_sent(
    client: Client, examples: dict[str, bytes], content_type: str | None, said: str
) -> None:
    headers = {"Authorization": AUTH["Authorization"]}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post(
        PATHS["tracking"],
        data=examples["tracking"],
        headers=headers,
        skip_auto_headers=["Content-Type"],
    )
    body = await response.json(content_type=None)
    assert response.status == 415
    assert said in body["detail"]
    assert "octet-stream" not in body["detail"]


async def test_declared_oversize_body_is_413_without_publishing(
    client: Client, capture: Capture, settings: Any
) -> None:
    # A file-like body: aiohttp warns that sending this much as bytes could block the loop.
    big = io.BytesIO(b"{" + b" " * settings.http.max_body_bytes + b"}")
    response = await client.post(PATHS["entered"], data=big, headers=AUTH)
    assert response.request_info.headers["Content-Length"]
    assert response.status == 413
    assert "exceeds" in (await response.json(content_type=None))["detail"]
    assert await capture.nothing_more(client)


async def test_chunked_oversize_body_is_cut_off_with_413(
    client: Client, capture: Capture, settings: Any
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(settings.http.max_body_bytes // 65536 + 2):
            yield b" " * 65536

    response = await client.post(PATHS["entered"], data=chunks(), headers=AUTH)
    assert response.status == 413
    assert await capture.nothing_more(client)


@pytest.mark.parametrize(
    "body", [b"", b"null", b"[]", b'"x"', b"1e999999", b"{}", b"\xff\xfe", b'{"storeId": 1}']
)
async def test_odd_bodies_never_give_5xx(client: Client, capture: Capture, body: bytes) -> None:
    status, problem_doc = await post(client, PATHS["entered"], body)
    assert status in {400, 422}
    assert problem_doc["status"] == status
    assert (await quarantined(capture)).body == body


async def test_probes(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["ready"] is True


async def test_a_request_id_is_echoed_or_made_up(
    client: Client, examples: dict[str, bytes]
) -> None:
    given = await client.post(
        PATHS["tracking"], data=examples["tracking"], headers=AUTH | {"X-Request-Id": "r-1"}
    )
    assert given.headers["X-Request-Id"] == "r-1"
    made = [
        (await client.post(PATHS["tracking"], data=b"{", headers=AUTH)).headers["X-Request-Id"]
        for _ in range(2)
    ]
    assert made[0] != made[1]
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in made)


# `Expect: 100-continue`: a refusal the head already shows comes first and alone.

HEAD_TIMEOUT_S: Final = 5.0
EXPECT_RID: Final = "expect-rid-1"


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer as it came off the socket; header names lowercased."""

    status: int
    headers: dict[str, str]
    body: bytes


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    fields = (line.partition(":") for line in lines)
    headers = {name.strip().lower(): value.strip() for name, _, value in fields}
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), HEAD_TIMEOUT_S)
    return Answer(int(status_line.split()[1]), headers, body)


@contextlib.asynccontextmanager
async def connected(
    client: Client,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def expecting_head(path: str, content_length: int, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Length: {content_length}",
        "Expect: 100-continue",
        f"X-Request-Id: {EXPECT_RID}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def first_answer(client: Client, content_length: int, headers: dict[str, str]) -> Answer:
    """The first answer to a head that awaits `100 Continue`; the body is never sent."""
    async with connected(client) as (reader, writer):
        writer.write(expecting_head(PATHS["tracking"], content_length, headers))
        return await read_answer(reader)


JSON_AUTH: Final = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("headers", "oversize", "status"),
    [
        pytest.param({"Content-Type": "application/json"}, False, 401, id="no-token"),
        pytest.param(JSON_AUTH | {"Authorization": "Bearer wrong"}, False, 401, id="wrong-token"),
        pytest.param(JSON_AUTH, True, 413, id="declared-oversize"),
        pytest.param(JSON_AUTH | {"Content-Type": "text/plain"}, False, 415, id="text"),
        pytest.param({"Authorization": f"Bearer {TOKEN}"}, False, 415, id="no-content-type"),
    ],
)
async def test_a_refusal_comes_instead_of_100_continue(
    client: Client,
    capture: Capture,
    settings: Settings,
    examples: dict[str, bytes],
    headers: dict[str, str],
    oversize: bool,
    status: int,
) -> None:
    length = settings.http.max_body_bytes + 1 if oversize else len(examples["tracking"])
    answer = await first_answer(client, length, headers)
    assert answer.status == status
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["x-request-id"] == EXPECT_RID
    # The body that was not wanted is not awaited either (RFC 9110, 10.1.1).
    assert answer.headers["connection"] == "close"
    assert orjson.loads(answer.body)["status"] == status
    assert (answer.headers.get("www-authenticate") == "Bearer") == (status == 401)
    assert await capture.nothing_more(client)
    metrics = await (await client.get("/metrics")).text()
    assert f'aifi_requests_total{{kind="tracking",status="{status}"}} 1.0' in metrics


async def test_an_acceptable_head_gets_100_continue_then_200(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    body = examples["tracking"]
    async with connected(client) as (reader, writer):
        writer.write(expecting_head(PATHS["tracking"], len(body), JSON_AUTH))
        interim = await read_answer(reader)
        writer.write(body)
        final = await read_answer(reader)
    assert (interim.status, interim.body) == (100, b"")
    assert final.status == 200
    assert final.headers["x-request-id"] == EXPECT_RID
    message = await capture.get()
    assert message.message_id == final.headers["x-event-id"]
    assert message.headers[contract.FINGERPRINT_HEADER] == hashlib.sha256(body).hexdigest()


async def test_an_unknown_expectation_is_417(client: Client) -> None:
    async with connected(client) as (reader, writer):
        head = expecting_head(PATHS["tracking"], 2, JSON_AUTH)
        writer.write(head.replace(b"100-continue", b"200-ok"))
        answer = await read_answer(reader)
    assert answer.status == 417
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["x-request-id"] == EXPECT_RID


async def test_the_rate_limit_is_checked_before_100_continue_and_counted_once(
    amqp_url: str, tmp_path: Path, examples: dict[str, bytes]
) -> None:
    settings = gateway_settings(
        amqp_url, tmp_path, auth={"rate_limit_per_s": 0.001, "rate_limit_burst": 2}
    )
    body = examples["tracking"]
    async for client in started_client(settings):
        statuses = []
        for _ in range(2):
            async with connected(client) as (reader, writer):
                writer.write(expecting_head(PATHS["tracking"], len(body), JSON_AUTH))
                statuses.append((await read_answer(reader)).status)
                writer.write(body)
                statuses.append((await read_answer(reader)).status)
        refused = await first_answer(client, len(body), JSON_AUTH)
        assert statuses == [100, 200, 100, 200]
        assert refused.status == 429
        assert refused.headers["retry-after"]


# The same with curl, which sends `Expect: 100-continue` by itself for a body over 1 MiB.


@dataclass(frozen=True, slots=True)
class Curled:
    status: int
    uploaded_bytes: int
    trace: str  # curl -v: "< " lines are what the server sent

    @property
    def continued(self) -> bool:
        return "< HTTP/1.1 100 Continue" in self.trace


async def curl(client: Client, body: Path, *headers: str) -> Curled:
    args = ["curl", "-sv", "--max-time", "10", "-o", "/dev/null"]
    args += ["-w", "%{http_code} %{size_upload}", "--data-binary", f"@{body}"]
    for header in ("Expect: 100-continue", *headers):
        args += ["-H", header]
    process = await asyncio.create_subprocess_exec(
        *args, str(client.make_url(PATHS["tracking"])), stdout=-1, stderr=-1
    )
    try:
        out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    status, uploaded = out.decode().split()
    return Curled(int(status), int(float(uploaded)), err.decode(errors="replace"))


@pytest.mark.parametrize(
    ("headers", "oversize", "status"),
    [
        pytest.param(("Content-Type: application/json",), False, 401, id="no-token"),
        pytest.param((f"Authorization: Bearer {TOKEN}",), False, 415, id="curl-form-type"),
        pytest.param(
            (f"Authorization: Bearer {TOKEN}", "Content-Type: application/json"),
            True,
            413,
            id="oversize",
        ),
    ],
)
async def test_curl_uploads_nothing_when_refused(
    client: Client,
    settings: Settings,
    tmp_path: Path,
    examples: dict[str, bytes],
    headers: tuple[str, ...],
    oversize: bool,
    status: int,
) -> None:
    body = tmp_path / "body.json"
    size = settings.http.max_body_bytes + 1 if oversize else 4096
    body.write_bytes(examples["tracking"].ljust(size))
    curled = await curl(client, body, *headers)
    assert curled.status == status
    assert not curled.continued, curled.trace
    assert curled.uploaded_bytes == 0


async def test_curl_uploads_an_accepted_body_after_100_continue(
    client: Client, tmp_path: Path, examples: dict[str, bytes]
) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(examples["tracking"].ljust(4096))
    curled = await curl(
        client, body, f"Authorization: Bearer {TOKEN}", "Content-Type: application/json"
    )
    assert (curled.status, curled.uploaded_bytes) == (200, 4096)
    assert curled.continued, curled.trace


TRACE_IDS: Final = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
TRACEPARENT: Final = f"00-{TRACE_IDS}-01"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ({"traceparent": TRACEPARENT}, {"traceparent": TRACEPARENT}),
        (
            {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE ,\trojo=00f0"},
            {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE,rojo=00f0"},
        ),
        ({"traceparent": TRACEPARENT, "tracestate": "Congo=1"}, {"traceparent": TRACEPARENT}),
        ({"traceparent": f"cc-{TRACE_IDS}-01-later"}, {"traceparent": TRACEPARENT}),
    ],
    ids=["traceparent", "tracestate", "invalid tracestate dropped", "later version"],
)
async def test_the_webhooks_trace_rides_on_its_event(
    client: Client,
    capture: Capture,
    examples: dict[str, bytes],
    sent: dict[str, str],
    kept: dict[str, str],
) -> None:
    assert await post(client, PATHS["entered"], examples["entered"], **sent) == (200, "ok")
    message = await capture.get()
    event = Event.from_body(message.body)
    trace = {"traceparent": event.traceparent, "tracestate": event.tracestate}
    assert {k: v for k, v in trace.items() if v is not None} == kept
    assert not [name for name in message.headers if "trace" in name]


@pytest.mark.parametrize(
    "sent",
    [
        {},
        {"traceparent": ""},
        {"traceparent": "garbage"},
        {"traceparent": TRACEPARENT.upper()},
        {"traceparent": f"{TRACEPARENT}-more"},
        {"traceparent": f"ff-{TRACE_IDS}-01"},
        {"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"},
        {"traceparent": f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01"},
        {"traceparent": f"00-{TRACE_IDS[:-1]}-01"},
        {"tracestate": "congo=t61rcWkgMzE"},
    ],
    ids=lambda sent: "/".join(f"{k}={v}" for k, v in sent.items()) or "none",
)
async def test_without_a_valid_traceparent_the_event_starts_a_new_trace(
    client: Client, capture: Capture, examples: dict[str, bytes], sent: dict[str, str]
) -> None:
    assert await post(client, PATHS["tracking"], examples["tracking"], **sent) == (200, "ok")
    message = await capture.get()
    event = Event.from_body(message.body)
    assert event.tracestate is None
    assert event.traceparent is not None
    version, trace_id, _, flags = event.traceparent.split("-")
    assert (version, flags) == ("00", "00")  # ours, and no span of ours was recorded
    assert trace_id not in sent.get("traceparent", "")


async def test_each_webhook_without_a_trace_starts_its_own(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    for _ in range(2):
        assert await post(client, PATHS["entered"], examples["entered"]) == (200, "ok")
    traces = {contract.decode((await capture.get()).body).traceparent for _ in range(2)}
    assert len(traces) == 2


async def test_the_accepted_event_is_logged_with_its_trace_id(
    client: Client, capture: Capture, examples: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="gateway.handlers"):
        await post(client, PATHS["entered"], examples["entered"], traceparent=TRACEPARENT)
    event = contract.decode((await capture.get()).body)
    (record,) = [r for r in caplog.records if r.getMessage() == "accepted"]
    assert (vars(record)["event_id"], vars(record)["trace_id"]) == (event.id, TRACE_IDS[:32])


async def test_a_body_that_does_not_come_in_time_is_408_and_publishes_nothing(
    amqp_url: str, tmp_path: Path, capture: Capture, examples: dict[str, bytes]
) -> None:
    settings = gateway_settings(amqp_url, tmp_path, http={"body_timeout_s": 0.2})
    body = examples["tracking"]
    head = expecting_head(PATHS["tracking"], len(body), JSON_AUTH)
    async for client in started_client(settings):
        async with connected(client) as (reader, writer):
            # Half the body, and no Expect: the gateway waits for the rest, then gives up.
            writer.write(head.replace(b"Expect: 100-continue\r\n", b"") + body[: len(body) // 2])
            answer = await read_answer(reader)
        assert answer.status == 408
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["x-request-id"] == EXPECT_RID
        assert await capture.nothing_more(client)
