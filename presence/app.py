"""The aiohttp application: routes, one middleware (auth, problems, metrics), the ledger in
cleanup_ctx."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import orjson
from aiohttp import hdrs, web

from core import http
from core.aio import first_of
from core.auth import TokenTable
from core.http import Rejection
from core.settings import PresenceProcessSettings
from presence import handlers, openapi
from presence.handlers import STATE, State
from presence.metrics import UNMATCHED, Metrics
from presence.reader import Reader

log = logging.getLogger(__name__)

RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Answered without a token: probes, scrapes and the API's own description.
PUBLIC: Final = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def http_problem(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own error as a problem, keeping its headers (a 405's `Allow`)."""
    detail = f"nothing at {request.path}" if exc.status == 404 else exc.reason
    if isinstance(exc, web.HTTPMethodNotAllowed):
        detail = f"{exc.method} is not allowed; allowed: {', '.join(sorted(exc.allowed_methods))}"
    headers = {k: v for k, v in exc.headers.items() if k != hdrs.CONTENT_TYPE}
    return Rejection(exc.status, exc.reason, detail, headers).response()


@web.middleware
async def served(request: web.Request, handler: RequestHandler) -> web.StreamResponse:
    """One layer around every route (each layer costs every request): the token checked,
    every error answered as a problem, the answer counted by route and status, and
    stamped with the request id (aiohttp's own 404 and 405 included)."""
    started_s = time.perf_counter()
    response = await answered(request, handler)
    elapsed_s = time.perf_counter() - started_s
    request.app[STATE].metrics.observe(route_of(request), response.status, elapsed_s)
    return http.stamped(request, response)


async def answered(request: web.Request, handler: RequestHandler) -> web.StreamResponse:
    """Every error answer is a JSON problem, aiohttp's own 404 and 405 included."""
    try:
        check_token(request)
        return await handler(request)
    except Rejection as rejection:
        return rejection.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_problem(request, exc)
    except Exception:
        log.exception("unhandled error", extra={"request_id": http.request_id(request)})
        return Rejection(500, "Internal Server Error", "unexpected error; see the log").response()


def check_token(request: web.Request) -> None:
    """A valid bearer token, except on the public routes."""
    if request.path in PUBLIC:
        return
    if request.app[STATE].tokens.identify(request.headers.get(hdrs.AUTHORIZATION)) is None:
        detail = "a valid bearer token is required"
        raise Rejection(401, "Unauthorized", detail, {hdrs.WWW_AUTHENTICATE: "Bearer"})


async def ledger_ctx(app: web.Application) -> AsyncIterator[None]:
    """The ledger kept open while the app runs; serving starts after the first attempt,
    whether the ledger opened or not (then /readyz says why)."""
    reader = app[STATE].reader
    stop = asyncio.Event()
    task = asyncio.create_task(reader.keep_open(stop), name="presence-ledger")
    await first_of(reader.tried.wait(), asyncio.shield(task))
    if task.done():  # it failed: say how, now
        task.result()
    yield
    stop.set()
    await task


def add_routes(app: web.Application) -> None:
    app.router.add_get("/stores", handlers.stores)
    app.router.add_get("/stores/{storeId}", handlers.store)
    app.router.add_get("/sessions/{sessionId}", handlers.session)
    app.router.add_get("/tracking/{uniqueEventId}", handlers.tracking)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/openapi.json", handlers.openapi_json)


def create_app(settings: PresenceProcessSettings) -> web.Application:
    app = web.Application(middlewares=[served])
    presence = settings.presence
    app[STATE] = State(
        reader=Reader(settings.ledger, presence.retry_max_s),
        tokens=TokenTable.from_settings(presence.tokens),
        metrics=Metrics.create(),
        openapi=orjson.dumps(openapi.document()),
        ready_timeout_s=presence.ready_timeout_s,
    )
    app.cleanup_ctx.append(ledger_ctx)
    add_routes(app)
    return app
