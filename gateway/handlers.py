"""HTTP handlers: auth, limits, parse, validate, normalize, hand over, answer."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiohttp import hdrs, web
from pydantic import BaseModel, ValidationError

from gateway import events
from gateway.auth import TokenTable
from gateway.contract import Headers, Kind, Outbound
from gateway.delivery import Delivery, Unavailable
from gateway.events import Receipt
from gateway.metrics import Metrics
from gateway.models import Tracking, Transition
from gateway.ratelimit import RateLimiter

log = logging.getLogger(__name__)

OK_BODY: Final = b'"ok"'
RETRY_AFTER_S: Final = 5
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Gateway:
    """What handlers read; built once at start-up and never replaced."""

    tokens: TokenTable
    delivery: Delivery
    metrics: Metrics
    max_body_bytes: int
    body_timeout_s: float
    rate_limiter: RateLimiter | None = None
    forward_headers: tuple[str, ...] = ()


GATEWAY: Final = web.AppKey("gateway", Gateway)


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


def refusal(rejection: Rejection, rid: str) -> web.Response:
    response = problem(rejection.status, rejection.title, rejection.detail, **rejection.extra)
    response.headers["X-Request-Id"] = rid
    if rejection.retry_after_s is not None:
        response.headers[hdrs.RETRY_AFTER] = str(rejection.retry_after_s)
    return response


def request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if 0 < len(given) <= 128 and given.isprintable() else secrets.token_hex(16)


def is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
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


async def read_body(request: web.Request, max_body_bytes: int, timeout_s: float) -> bytes:
    """The whole body within `timeout_s`, refusing more than `max_body_bytes`.

    A declared excess is refused without reading a byte; a chunked body is cut
    off at the limit.
    """
    too_large = Rejection(413, "Payload Too Large", f"body exceeds {max_body_bytes} bytes")
    if request.content_length is not None and request.content_length > max_body_bytes:
        raise too_large
    if request.content.is_eof():
        # Usual for a webhook: the body came with the head, so no timer is needed.
        return await request.read()
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except TimeoutError:
        raise Rejection(408, "Request Timeout", f"body not received in {timeout_s} s") from None


def parse(raw: bytes, content_type: str, model: type[BaseModel]) -> BaseModel:
    if not is_json(content_type):
        detail = f"expected application/json, got {content_type}"
        raise Rejection(415, "Unsupported Media Type", detail)
    try:
        # One pass in pydantic-core parses and validates: no Python dict built in between.
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise Rejection(400, "Bad Request", f"invalid JSON: {exc.errors()[0]['msg']}") from None
        errors = field_errors(exc)
        detail = "body does not match the schema: " + ", ".join(e["field"] for e in errors)
        raise Rejection(422, "Unprocessable Content", detail, errors=errors) from None


def normalize(kind: Kind, model: BaseModel, receipt: Receipt) -> dict[str, Any]:
    if isinstance(model, Transition):
        return events.from_transition(model, kind, receipt)
    assert isinstance(model, Tracking)
    return events.from_tracking(model, receipt)


def forwarded(request: web.Request, names: tuple[str, ...]) -> Headers:
    return {f"aifi_http_{n.lower()}": request.headers[n] for n in names if n in request.headers}


def unauthorized(rid: str) -> web.Response:
    response = problem(401, "Unauthorized", "a valid bearer token is required")
    response.headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
    response.headers["X-Request-Id"] = rid
    # The body was not read: closing spares reading a stranger's upload.
    response.force_close()
    return response


def accepted(rid: str, event_id: str) -> web.Response:
    headers = {"X-Request-Id": rid, "X-Event-Id": event_id}
    return web.Response(body=OK_BODY, content_type="application/json", headers=headers)


class Receiver:
    """The handler of one webhook kind."""

    def __init__(self, kind: Kind, model: type[Transition] | type[Tracking]) -> None:
        self.kind, self.model = kind, model

    async def handle(self, request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        started_s = time.perf_counter()
        response = await self._respond(gateway, request, request_id(request))
        gateway.metrics.observe(self.kind, response.status, time.perf_counter() - started_s)
        return response

    async def _respond(self, gateway: Gateway, request: web.Request, rid: str) -> web.Response:
        token_name = gateway.tokens.identify(request.headers.get(hdrs.AUTHORIZATION))
        if token_name is None:
            log.info("unauthorized", extra={"request_id": rid, "kind": self.kind})
            return unauthorized(rid)
        try:
            check_rate(gateway.rate_limiter, token_name)
            raw = await read_body(request, gateway.max_body_bytes, gateway.body_timeout_s)
        except Rejection as rejection:
            self._log_refusal(rejection, rid, token_name)
            response = refusal(rejection, rid)
            response.force_close()
            return response
        receipt = Receipt(raw, token_name, datetime.now(UTC))
        return await self._accept(gateway, request, receipt, rid)

    async def _accept(
        self, gateway: Gateway, request: web.Request, receipt: Receipt, rid: str
    ) -> web.Response:
        try:
            model = parse(receipt.raw_body, request.content_type, self.model)
        except Rejection as rejection:
            await self._quarantine(gateway, rejection, receipt, request.content_type, rid)
            self._log_refusal(rejection, rid, receipt.token_name)
            return refusal(rejection, rid)
        event = normalize(self.kind, model, receipt)
        extra = forwarded(request, gateway.forward_headers)
        outbound = events.to_outbound(event, receipt.received_at, extra)
        return await self._hand_over(gateway.delivery, outbound, rid)

    async def _hand_over(self, delivery: Delivery, outbound: Outbound, rid: str) -> web.Response:
        try:
            await delivery.put(outbound)
        except Unavailable as exc:
            # The delivery logs the cause once when it starts, not on every request.
            rejection = Rejection(503, "Service Unavailable", f"not accepted: {exc}", RETRY_AFTER_S)
            return refusal(rejection, rid)
        log.debug("accepted", extra={"request_id": rid, "event_id": outbound.message_id})
        return accepted(rid, outbound.message_id)

    async def _quarantine(
        self, gateway: Gateway, rejection: Rejection, receipt: Receipt, content_type: str, rid: str
    ) -> None:
        kept = events.quarantined(self.kind, rejection.detail, receipt, content_type)
        try:
            await gateway.delivery.put(kept)
        except Unavailable as exc:
            log.error(
                "invalid request could not be quarantined",
                extra={"request_id": rid, "kind": self.kind, "reason": str(exc)},
            )
            return
        gateway.metrics.quarantined.labels(self.kind).inc()

    def _log_refusal(self, rejection: Rejection, rid: str, token_name: str | None) -> None:
        log.info(
            "request refused",
            extra={
                "request_id": rid,
                "kind": self.kind,
                "status": rejection.status,
                "token_name": token_name,
                "reason": rejection.detail,
            },
        )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    status = request.app[GATEWAY].delivery.status()
    return web.json_response(status, status=200 if status["ready"] else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})
