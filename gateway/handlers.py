"""HTTP handlers: auth, limits, parse, validate, normalize, hand over, answer."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final, Generic

import orjson
from aiohttp import HttpVersion11, hdrs, web
from pydantic import ValidationError

from core.auth import TokenTable
from core.contract import (
    TRACEPARENT,
    TRACESTATE,
    Headers,
    Outbound,
    TraceFields,
    forwarded_header,
    trace_id,
)
from core.http import X_REQUEST_ID, Rejection, exposition, problem, request_id, stamped
from core.tracing import EVENT_ID, Tracer, incoming, new_trace, span
from core.validation import problems
from gateway import normalize
from gateway.metrics import Metrics
from gateway.normalize import Model, Normalizer, Receipt
from gateway.pipeline import Pipeline, Unavailable
from gateway.ratelimit import RateLimiter

log = logging.getLogger(__name__)

OK_BODY: Final = b'"ok"'
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
JSON_MEDIA_TYPE: Final = "application/json"
X_EVENT_ID: Final = "X-Event-Id"
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
    # None: tracing is off, and the request path starts no span.
    tracer: Tracer | None = None


GATEWAY: Final = web.AppKey("gateway", Gateway)
# The token name of a request its head was found acceptable for, before its body was read.
ADMITTED: Final = web.RequestKey("admitted", str)
NO_HEADERS: Final[Headers] = {}
BEARER: Final = MappingProxyType({hdrs.WWW_AUTHENTICATE: "Bearer"})
RETRY_LATER: Final = MappingProxyType({hdrs.RETRY_AFTER: str(RETRY_AFTER_S)})


def unread(response: web.Response) -> web.Response:
    """`response`, closing the connection: the body was not read, and need not be."""
    response.force_close()
    return response


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
    return [{"field": p.field or "(body)", "message": p.message} for p in problems(error)]


# The head checks return the refusal, or None: an accepted request builds no exception.


def rate_refusal(limiter: RateLimiter | None, token_name: str) -> Rejection | None:
    wait_s = limiter.retry_after_s(token_name) if limiter else 0
    if wait_s:
        retry = {hdrs.RETRY_AFTER: str(wait_s)}
        return Rejection(429, "Too Many Requests", f"rate limit of {token_name!r}", retry)
    return None


def too_large(max_body_bytes: int) -> Rejection:
    return Rejection(413, "Payload Too Large", f"body exceeds {max_body_bytes} bytes")


def media_type_refusal(content_type: str | None) -> Rejection | None:
    if content_type is None:
        return Rejection(
            415, "Unsupported Media Type", "expected application/json; no Content-Type"
        )
    if not is_json(content_type):
        detail = f"expected application/json, got {content_type}"
        return Rejection(415, "Unsupported Media Type", detail)
    return None


def expectation_refusal(expect: str) -> Rejection | None:
    if expect.lower() != "100-continue":
        detail = f"the only expectation supported is 100-continue, not {expect}"
        return Rejection(417, "Expectation Failed", detail)
    return None


def head_refusal(
    gateway: Gateway, request: web.Request, token_name: str | None, *, before_body: bool
) -> Rejection | None:
    """The refusal of a request its head rules out, None if its body may be read.

    `before_body`: the client awaits `100 Continue`, so the media type is checked now.
    """
    if before_body and (refused := expectation_refusal(request.headers.get(hdrs.EXPECT, ""))):
        return refused
    if token_name is None:
        return Rejection(401, "Unauthorized", "a valid bearer token is required", BEARER)
    if refused := rate_refusal(gateway.rate_limiter, token_name):
        return refused
    declared = request.content_length
    if declared is not None and declared > gateway.max_body_bytes:
        return too_large(gateway.max_body_bytes)
    return media_type_refusal(media_type(request)) if before_body else None


def identify(gateway: Gateway, request: web.Request) -> str | None:
    return gateway.tokens.identify(request.headers.get(hdrs.AUTHORIZATION))


def admitted(request: web.Request) -> str | None:
    """The token name the expect handler admitted the head for, if it ran."""
    return request.get(ADMITTED) if hdrs.EXPECT in request.headers else None


async def read_body(request: web.Request, max_body_bytes: int, timeout_s: float) -> bytes:
    """The whole body within `timeout_s`; a chunked one is cut off at `max_body_bytes`."""
    try:
        if request.content.is_eof():
            # Usual for a webhook: the body came with the head, so no timer is needed.
            return await request.read()
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
    if refused := media_type_refusal(content_type):
        raise refused
    check_json(raw)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid(exc) from None


def invalid(exc: ValidationError) -> Rejection:
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        # Deeper nesting than pydantic-core allows (orjson allows more).
        reason = first.get("ctx", {}).get("error", first["msg"])
        return Rejection(400, "Bad Request", f"invalid JSON: {reason}")
    errors = field_errors(exc)
    detail = "body does not match the schema: " + ", ".join(e["field"] for e in errors)
    return Rejection(422, "Unprocessable Content", detail, errors=errors)


def forwarded(request: web.Request, names: tuple[str, ...]) -> Headers:
    if not names:
        return NO_HEADERS
    return {forwarded_header(n): request.headers[n] for n in names if n in request.headers}


def received_trace(request: web.Request) -> TraceFields | None:
    """The webhook's W3C trace context, if it sent a valid one (else None: a new trace)."""
    headers = request.headers
    parent = headers.get(TRACEPARENT)
    return None if parent is None else incoming(parent, headers.getall(TRACESTATE, []))


def accepted(event_id: str, rid: str) -> web.Response:
    # The hot path's answer: its headers, request id included, made in one dict.
    headers = {hdrs.CONTENT_TYPE: JSON_MEDIA_TYPE, X_EVENT_ID: event_id, X_REQUEST_ID: rid}
    return web.Response(body=OK_BODY, headers=headers)


def unavailable(exc: Unavailable) -> Rejection:
    # The pipeline logs the cause once when it starts, not on every request.
    return Rejection(503, "Service Unavailable", f"not accepted: {exc}", RETRY_LATER)


async def send_continue(request: web.Request) -> None:
    await request.writer.write(CONTINUE)
    # As aiohttp's own expect handler does: the answer's size is counted from here.
    request.writer.output_size = 0


class Receiver(Generic[Model]):
    """The handler of one webhook kind, built with the normalization of its bodies."""

    def __init__(self, normalizer: Normalizer[Model], gateway: Gateway) -> None:
        self.kind = normalizer.kind
        self.normalizer = normalizer
        self.gateway = gateway
        self._observe = gateway.metrics.observer(self.kind)
        self._quarantined = gateway.metrics.quarantined.labels(self.kind)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The request path: admit the head, read the body, normalize it, hand it over."""
        started_s = time.perf_counter()
        tracer = self.gateway.tracer
        try:
            if tracer is None:
                response = await self.respond(request, received_trace(request) or new_trace())
            else:
                response = await self.traced(request, tracer)
        except Exception:
            response = server_error(request)
        self._observe(response.status, time.perf_counter() - started_s)
        return response

    async def traced(self, request: web.Request, tracer: Tracer) -> web.Response:
        """`respond` in a `receive` span, the child of the webhook's trace (or a new root)."""
        with span(tracer, "receive", received_trace(request) or {}, "server") as receive:
            response = await self.respond(request, receive.trace)
            if response.status >= 500:
                receive.fail(f"answered {response.status}")
            return response

    async def respond(self, request: web.Request, trace: TraceFields) -> web.Response:
        gateway = self.gateway
        token_name = admitted(request)
        if token_name is None:
            token_name = identify(gateway, request)
            if refused := head_refusal(gateway, request, token_name, before_body=False):
                return unread(self.refuse(request, refused, token_name))
        try:
            raw = await read_body(request, gateway.max_body_bytes, gateway.body_timeout_s)
        except Rejection as rejection:
            return unread(self.refuse(request, rejection, token_name))
        headers = forwarded(request, gateway.forward_headers)
        receipt = Receipt(raw, token_name, datetime.now(UTC), headers, trace)
        try:
            model = parse(raw, media_type(request), self.normalizer.model)
        except Rejection as rejection:
            await self.quarantine(request, rejection, receipt)
            return self.refuse(request, rejection, token_name)
        outbound = self.normalizer.build(model, receipt)
        tracer = gateway.tracer
        try:
            if tracer is None:
                await gateway.pipeline.accept(outbound)
            else:
                await self.spooled(outbound, trace, tracer)
        except Unavailable as exc:
            return stamped(request, unavailable(exc).response())
        rid = request_id(request)
        if log.isEnabledFor(logging.DEBUG):
            ids = {"event_id": outbound.message_id, "trace_id": trace_id(trace[TRACEPARENT])}
            log.debug("accepted", extra={"request_id": rid, **ids})
        return accepted(outbound.message_id, rid)

    async def spooled(self, outbound: Outbound, trace: TraceFields, tracer: Tracer) -> None:
        """`Pipeline.accept` in a `spool` span: until the event is safe."""
        with span(tracer, "spool", trace, "internal", {EVENT_ID: outbound.message_id}):
            await self.gateway.pipeline.accept(outbound)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """The route's expect handler: `100 Continue` only to a head that can be accepted.

        A client that waits for it before sending the body (curl does, for a large one)
        gets a refusal as its first and only answer instead, without uploading a body
        that would be thrown away. An HTTP/1.0 client's expectation is ignored.
        """
        if request.version != HttpVersion11:
            return None
        started_s = time.perf_counter()
        token_name = identify(self.gateway, request)
        if refused := head_refusal(self.gateway, request, token_name, before_body=True):
            response = unread(self.refuse(request, refused, token_name))
            self._observe(response.status, time.perf_counter() - started_s)
            return response
        if token_name is not None:  # always so once admitted
            request[ADMITTED] = token_name
        await send_continue(request)
        return None

    async def quarantine(
        self, request: web.Request, rejection: Rejection, receipt: Receipt
    ) -> None:
        """Keep a body we refused (400, 415, 422) under `invalid.<kind>`, as received."""
        kept = normalize.quarantined(self.kind, rejection.detail, receipt, request.content_type)
        try:
            await self.gateway.pipeline.accept(kept)
        except Unavailable as exc:
            log.error(
                "invalid request could not be quarantined",
                extra={"request_id": request_id(request), "kind": self.kind, "reason": str(exc)},
            )
            return
        self._quarantined.inc()

    def refuse(
        self, request: web.Request, rejection: Rejection, token_name: str | None
    ) -> web.Response:
        """The answer to a refused request, logged."""
        rid = request_id(request)
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
        return stamped(request, rejection.response())


def stamped_problem(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    return stamped(request, problem(status, title, detail))


SEE_THE_LOG: Final = "unexpected error; see the gateway log"


def server_error(request: web.Request) -> web.Response:
    """The answer to a handler's unexpected exception (call it in the `except` block)."""
    log.exception("unhandled error", extra={"path": request.path})
    return stamped_problem(request, 500, "Internal Server Error", SEE_THE_LOG)


def answering_errors(handler: RequestHandler) -> RequestHandler:
    """`handler`, answering an unexpected exception as a JSON problem."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception:
            return server_error(request)

    return answer


def not_found(request: web.Request) -> web.Response:
    return stamped_problem(request, 404, "Not Found", f"nothing at {request.path}")


def not_allowed(request: web.Request, allowed: frozenset[str]) -> web.Response:
    detail = f"{request.method} is not allowed here; allowed: {', '.join(sorted(allowed))}"
    response = stamped_problem(request, 405, "Method Not Allowed", detail)
    response.headers[hdrs.ALLOW] = ",".join(sorted(allowed))
    return response


async def healthz(request: web.Request) -> web.Response:
    return stamped(request, web.json_response({"status": "alive"}))


async def readyz(request: web.Request) -> web.Response:
    status = request.app[GATEWAY].pipeline.status()
    answer = web.json_response(dataclasses.asdict(status), status=200 if status.ready else 503)
    return stamped(request, answer)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.exposition()
    return stamped(request, exposition(body))
