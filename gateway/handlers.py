"""HTTP handlers: auth, limits, parse, validate, normalize, hand over, answer."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Generic

import orjson
from aiohttp import HttpVersion11, hdrs, web
from pydantic import ValidationError

from core.contract import Headers, forwarded_header
from gateway import events
from gateway.auth import TokenTable
from gateway.events import Model, Normalizer, Receipt
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, Unavailable
from gateway.ratelimit import RateLimiter

log = logging.getLogger(__name__)

OK_BODY: Final = b'"ok"'
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
JSON_MEDIA_TYPE: Final = "application/json"
RETRY_AFTER_S: Final = 5
RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Gateway:
    """What handlers read; built once at start-up and never replaced."""

    tokens: TokenTable
    pipeline: Pipeline
    metrics: Metrics
    max_body_bytes: int
    body_timeout_s: float
    rate_limiter: RateLimiter | None = None
    forward_headers: tuple[str, ...] = ()


GATEWAY: Final = web.AppKey("gateway", Gateway)
REQUEST_ID: Final = web.RequestKey("request_id", str)
# The token name of a request its head was found acceptable for, before its body was read.
ADMITTED: Final = web.RequestKey("admitted", str)


class Rejection(Exception):
    """A request we refuse, with the status and a JSON problem to answer."""

    def __init__(
        self, status: int, title: str, detail: str, retry_after_s: int | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.retry_after_s, self.extra = retry_after_s, extra


def problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    """An RFC 9457 problem document; every error the gateway gives is one."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail} | extra
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/problem+json"
    )


def refusal(rejection: Rejection) -> web.Response:
    response = problem(rejection.status, rejection.title, rejection.detail, **rejection.extra)
    if rejection.status == 401:
        response.headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
    if rejection.retry_after_s is not None:
        response.headers[hdrs.RETRY_AFTER] = str(rejection.retry_after_s)
    return response


def unread(response: web.Response) -> web.Response:
    """`response`, closing the connection: the body was not read, and need not be."""
    response.force_close()
    return response


def request_id(request: web.Request) -> str:
    """The client's `X-Request-Id` if it is usable, else one made up once for the request."""
    if REQUEST_ID not in request:
        given = request.headers.get("X-Request-Id", "")
        usable = 0 < len(given) <= 128 and given.isprintable()
        request[REQUEST_ID] = given if usable else secrets.token_hex(16)
    return request[REQUEST_ID]


async def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer carries the request id, aiohttp's own (404, 405, 417) included."""
    response.headers.setdefault("X-Request-Id", request_id(request))


def media_type(request: web.Request) -> str | None:
    """The media type the client declared, lowercased; None if it declared none.

    Not `request.content_type`, which says `application/octet-stream` for a missing one.
    """
    declared = request.headers.get(hdrs.CONTENT_TYPE, "").partition(";")[0].strip().lower()
    return declared or None


def is_json(content_type: str) -> bool:
    return content_type == JSON_MEDIA_TYPE or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def field_errors(error: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in item["loc"]) or "(body)", "message": item["msg"]}
        for item in error.errors(include_url=False, include_input=False)
    ]


def check_rate(limiter: RateLimiter | None, token_name: str) -> None:
    wait_s = limiter.retry_after_s(token_name) if limiter else 0
    if wait_s:
        raise Rejection(429, "Too Many Requests", f"rate limit of {token_name!r}", wait_s)


def too_large(max_body_bytes: int) -> Rejection:
    return Rejection(413, "Payload Too Large", f"body exceeds {max_body_bytes} bytes")


def check_declared_size(content_length: int | None, max_body_bytes: int) -> None:
    if content_length is not None and content_length > max_body_bytes:
        raise too_large(max_body_bytes)


def check_media_type(content_type: str | None) -> None:
    if content_type is None:
        raise Rejection(415, "Unsupported Media Type", "expected application/json; no Content-Type")
    if not is_json(content_type):
        detail = f"expected application/json, got {content_type}"
        raise Rejection(415, "Unsupported Media Type", detail)


def check_expectation(expect: str) -> None:
    if expect.lower() != "100-continue":
        detail = f"the only expectation supported is 100-continue, not {expect}"
        raise Rejection(417, "Expectation Failed", detail)


def check_head(
    gateway: Gateway, request: web.Request, token_name: str | None, *, before_body: bool
) -> str:
    """`token_name`, if the head allows the body to be read; else raise the refusal.

    `before_body`: the client awaits `100 Continue`, so the media type is checked now.
    """
    if before_body:
        check_expectation(request.headers.get(hdrs.EXPECT, ""))
    if token_name is None:
        raise Rejection(401, "Unauthorized", "a valid bearer token is required")
    check_rate(gateway.rate_limiter, token_name)
    check_declared_size(request.content_length, gateway.max_body_bytes)
    if before_body:
        check_media_type(media_type(request))
    return token_name


def identify(gateway: Gateway, request: web.Request) -> str | None:
    """The name of the request's token (found once: when its head was admitted, if it was)."""
    return request.get(ADMITTED) or gateway.tokens.identify(request.headers.get(hdrs.AUTHORIZATION))


def admit(
    gateway: Gateway, request: web.Request, token_name: str | None, *, before_body: bool
) -> None:
    """Raise the refusal of a request its head rules out; else note it as admitted, once."""
    if ADMITTED not in request:
        request[ADMITTED] = check_head(gateway, request, token_name, before_body=before_body)


async def read_body(request: web.Request, max_body_bytes: int, timeout_s: float) -> bytes:
    """The whole body within `timeout_s`; a chunked one is cut off at `max_body_bytes`."""
    if request.content.is_eof():
        # Usual for a webhook: the body came with the head, so no timer is needed.
        return await request.read()
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(max_body_bytes) from None
    except TimeoutError:
        raise Rejection(408, "Request Timeout", f"body not received in {timeout_s} s") from None


def check_json(raw: bytes) -> None:
    """Refuse what is not JSON as the consumers read it (they decode events with orjson).

    pydantic-core also takes `NaN`, `Infinity` and numbers beyond a double, which are
    not JSON (RFC 8259) and which no consumer could decode.
    """
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejection(400, "Bad Request", f"invalid JSON: {exc}") from None


def parse(raw: bytes, content_type: str | None, model: type[Model]) -> Model:
    """The validated body, sent as `content_type` (None if the client declared none)."""
    check_media_type(content_type)
    check_json(raw)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            # Deeper nesting than pydantic-core allows (orjson allows more).
            reason = first.get("ctx", {}).get("error", first["msg"])
            raise Rejection(400, "Bad Request", f"invalid JSON: {reason}") from None
        errors = field_errors(exc)
        detail = "body does not match the schema: " + ", ".join(e["field"] for e in errors)
        raise Rejection(422, "Unprocessable Content", detail, errors=errors) from None


def forwarded(request: web.Request, names: tuple[str, ...]) -> Headers:
    return {forwarded_header(n): request.headers[n] for n in names if n in request.headers}


def accepted(event_id: str) -> web.Response:
    headers = {"X-Event-Id": event_id}
    return web.Response(body=OK_BODY, content_type=JSON_MEDIA_TYPE, headers=headers)


def unavailable(exc: Unavailable) -> web.Response:
    # The pipeline logs the cause once when it starts, not on every request.
    return refusal(Rejection(503, "Service Unavailable", f"not accepted: {exc}", RETRY_AFTER_S))


class Receiver(Generic[Model]):
    """The handler of one webhook kind, built with the normalization of its bodies."""

    def __init__(self, normalizer: Normalizer[Model]) -> None:
        self.kind = normalizer.kind
        self.normalizer = normalizer

    async def handle(self, request: web.Request) -> web.StreamResponse:
        gateway, started_s = request.app[GATEWAY], time.perf_counter()
        response = await self.respond(gateway, request)
        gateway.metrics.observe(self.kind, response.status, time.perf_counter() - started_s)
        return response

    async def respond(self, gateway: Gateway, request: web.Request) -> web.Response:
        """The request path: admit the head, read the body, normalize it, hand it over."""
        token_name = identify(gateway, request)
        try:
            admit(gateway, request, token_name, before_body=False)
            raw = await read_body(request, gateway.max_body_bytes, gateway.body_timeout_s)
        except Rejection as rejection:
            return unread(self.refuse(request, rejection, token_name))
        headers = forwarded(request, gateway.forward_headers)
        receipt = Receipt(raw, token_name, datetime.now(UTC), headers)
        try:
            model = parse(raw, media_type(request), self.normalizer.model)
        except Rejection as rejection:
            await self.quarantine(gateway, request, rejection, receipt)
            return self.refuse(request, rejection, token_name)
        outbound = self.normalizer.build(model, receipt)
        try:
            await gateway.pipeline.accept(outbound)
        except Unavailable as exc:
            return unavailable(exc)
        log.debug(
            "accepted", extra={"request_id": request_id(request), "event_id": outbound.message_id}
        )
        return accepted(outbound.message_id)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """The route's expect handler: `100 Continue` only to a head that can be accepted.

        A client that waits for it before sending the body (curl does, for a large one)
        gets a refusal as its first and only answer instead, without uploading a body
        that would be thrown away. An HTTP/1.0 client's expectation is ignored.
        """
        if request.version != HttpVersion11:
            return None
        gateway, started_s = request.app[GATEWAY], time.perf_counter()
        token_name = identify(gateway, request)
        try:
            admit(gateway, request, token_name, before_body=True)
        except Rejection as rejection:
            refused = unread(self.refuse(request, rejection, token_name))
            gateway.metrics.observe(self.kind, refused.status, time.perf_counter() - started_s)
            return refused
        await request.writer.write(CONTINUE)
        # As aiohttp's own expect handler does: the answer's size is counted from here.
        request.writer.output_size = 0
        return None

    async def quarantine(
        self, gateway: Gateway, request: web.Request, rejection: Rejection, receipt: Receipt
    ) -> None:
        """Keep a body we refused (400, 415, 422) under `invalid.<kind>`, as received."""
        kept = events.quarantined(self.kind, rejection.detail, receipt, request.content_type)
        try:
            await gateway.pipeline.accept(kept)
        except Unavailable as exc:
            log.error(
                "invalid request could not be quarantined",
                extra={"request_id": request_id(request), "kind": self.kind, "reason": str(exc)},
            )
            return
        gateway.metrics.quarantined.labels(self.kind).inc()

    def refuse(
        self, request: web.Request, rejection: Rejection, token_name: str | None
    ) -> web.Response:
        """The answer to a refused request, logged."""
        log.info(
            "request refused",
            extra={
                "request_id": request_id(request),
                "kind": self.kind,
                "status": rejection.status,
                "token_name": token_name,
                "reason": rejection.detail,
            },
        )
        return refusal(rejection)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    status = request.app[GATEWAY].pipeline.status()
    return web.json_response(dataclasses.asdict(status), status=200 if status.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})
