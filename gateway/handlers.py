"""HTTP handlers: auth, limits, parse, validate, normalize, hand over, answer."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiohttp import hdrs, web
from pydantic import BaseModel, ValidationError

from gateway import events
from gateway.auth import TokenTable
from gateway.contract import Kind, Outbound
from gateway.delivery import Delivery, Unavailable
from gateway.events import Receipt
from gateway.models import Tracking, Transition

log = logging.getLogger(__name__)

OK_BODY: Final = b'"ok"'
RETRY_AFTER_S: Final = "5"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Gateway:
    """What handlers read; built once at start-up and never changed."""

    tokens: TokenTable
    delivery: Delivery
    max_body_bytes: int
    forward_headers: tuple[str, ...] = ()


class Rejection(Exception):
    """A request we refuse, with the status and a JSON problem to answer."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


def problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    """An RFC 9457 problem document; every error the gateway gives is one."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail} | extra
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/problem+json"
    )


def request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex


def is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def field_errors(error: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in item["loc"]) or "(body)", "message": item["msg"]}
        for item in error.errors(include_url=False, include_input=False)
    ]


async def read_body(request: web.Request, max_body_bytes: int) -> bytes:
    """The whole body, refusing more than `max_body_bytes`; a declared excess is never read."""
    too_large = Rejection(413, "Payload Too Large", f"body exceeds {max_body_bytes} bytes")
    if request.content_length is not None and request.content_length > max_body_bytes:
        raise too_large
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None


def parse(raw: bytes, content_type: str, model: type[BaseModel]) -> BaseModel:
    if not is_json(content_type):
        raise Rejection(
            415, "Unsupported Media Type", f"expected application/json, got {content_type}"
        )
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejection(400, "Bad Request", f"invalid JSON: {exc}") from None
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        errors = field_errors(exc)
        detail = "body does not match the schema: " + ", ".join(e["field"] for e in errors)
        raise Rejection(422, "Unprocessable Content", detail, errors=errors) from None


def normalize(kind: Kind, model: BaseModel, receipt: Receipt) -> dict[str, Any]:
    if isinstance(model, Transition):
        return events.from_transition(model, kind, receipt)
    assert isinstance(model, Tracking)
    return events.from_tracking(model, receipt)


def forwarded(request: web.Request, names: tuple[str, ...]) -> dict[str, str | int | None]:
    return {f"aifi_http_{n.lower()}": request.headers[n] for n in names if n in request.headers}


class Receiver:
    """The handler of one webhook kind."""

    def __init__(self, kind: Kind, model: type[Transition] | type[Tracking]) -> None:
        self.kind, self.model = kind, model

    async def handle(self, request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        rid = request_id(request)
        token_name = gateway.tokens.identify(request.headers.get(hdrs.AUTHORIZATION))
        if token_name is None:
            return self._unauthorized(rid)
        try:
            raw = await read_body(request, gateway.max_body_bytes)
        except Rejection as rejection:
            return self._refuse(rejection, rid, token_name, close=True)
        receipt = Receipt(raw, token_name, datetime.now(UTC))
        try:
            model = parse(raw, request.content_type, self.model)
        except Rejection as rejection:
            await self._quarantine(gateway.delivery, rejection, receipt, request, rid)
            return self._refuse(rejection, rid, token_name)
        event = normalize(self.kind, model, receipt)
        outbound = events.to_outbound(
            event, receipt.received_at, forwarded(request, gateway.forward_headers)
        )
        return await self._hand_over(gateway.delivery, outbound, rid, token_name)

    async def _hand_over(
        self, delivery: Delivery, outbound: Outbound, rid: str, token_name: str
    ) -> web.Response:
        try:
            await delivery.put(outbound)
        except Unavailable as exc:
            log.debug(  # the delivery logs the cause once, not per request
                "event not accepted",
                extra={
                    "request_id": rid,
                    "kind": self.kind,
                    "event_id": outbound.message_id,
                    "token_name": token_name,
                    "reason": str(exc),
                },
            )
            response = problem(503, "Service Unavailable", f"event not accepted: {exc}")
            response.headers[hdrs.RETRY_AFTER] = RETRY_AFTER_S
            return response
        log.debug(
            "event accepted",
            extra={"request_id": rid, "kind": self.kind, "event_id": outbound.message_id},
        )
        return web.Response(
            body=OK_BODY,
            content_type="application/json",
            headers={"X-Request-Id": rid, "X-Event-Id": outbound.message_id},
        )

    def _unauthorized(self, rid: str) -> web.Response:
        log.info("unauthorized", extra={"request_id": rid, "kind": self.kind})
        response = problem(401, "Unauthorized", "a valid bearer token is required")
        response.headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
        response.force_close()
        return response

    def _refuse(
        self, rejection: Rejection, rid: str, token_name: str, close: bool = False
    ) -> web.Response:
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
        response = problem(rejection.status, rejection.title, rejection.detail, **rejection.extra)
        response.headers["X-Request-Id"] = rid
        if close:
            response.force_close()
        return response

    async def _quarantine(
        self,
        delivery: Delivery,
        rejection: Rejection,
        receipt: Receipt,
        request: web.Request,
        rid: str,
    ) -> None:
        kept = events.quarantined(self.kind, rejection.detail, receipt, request.content_type)
        try:
            await delivery.put(kept)
        except Unavailable as exc:
            log.error(
                "invalid request could not be quarantined",
                extra={"request_id": rid, "kind": self.kind, "reason": str(exc)},
            )


GATEWAY: Final = web.AppKey("gateway", Gateway)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    status = request.app[GATEWAY].delivery.status()
    return web.json_response(status, status=200 if status["ready"] else 503)
