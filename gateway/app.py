"""The aiohttp application: routes, resources in cleanup_ctx.

No middleware and no response signal: each handler answers its errors as JSON problems and
stamps the request id itself, and unknown paths and methods have routes of their own
(`make bench`: a middleware and a signal cost every request a few microseconds).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import HttpVersion11, hdrs, web

from core.auth import TokenTable
from core.http import stamped
from core.settings import GatewayProcessSettings
from core.tracing import Tracer
from gateway import normalize, openapi
from gateway.handlers import (
    GATEWAY,
    Gateway,
    Receiver,
    RequestHandler,
    answering_errors,
    expectation_refusal,
    healthz,
    metrics,
    not_allowed,
    not_found,
    readyz,
    send_continue,
)
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.ratelimit import RateLimiter

log = logging.getLogger(__name__)


PIPELINE = web.AppKey("pipeline", Pipeline)
OPENAPI = web.AppKey("openapi", dict[str, Any])


async def expect_anything(request: web.Request) -> web.StreamResponse | None:
    """aiohttp's own expect handler, answering an unknown expectation as a JSON problem."""
    if request.version != HttpVersion11:
        return None
    refused = expectation_refusal(request.headers.get(hdrs.EXPECT, ""))
    if refused is not None:
        return stamped(request, refused.response())
    await send_continue(request)
    return None


def method_not_allowed(allowed: frozenset[str]) -> RequestHandler:
    async def answer(request: web.Request) -> web.StreamResponse:
        return not_allowed(request, allowed)

    return answer


async def nothing_here(request: web.Request) -> web.StreamResponse:
    return not_found(request)


def refuse_other_methods(app: web.Application, path: str, allowed: frozenset[str]) -> None:
    """A 405 with `Allow` for every other method on `path` (added right after its routes,
    so that aiohttp keeps them in one resource)."""
    app.router.add_route(
        hdrs.METH_ANY, path, method_not_allowed(allowed), expect_handler=expect_anything
    )


async def pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the pipeline (recovering the spool) before listening; close it after the last
    request, draining what the relay can."""
    async with app[PIPELINE]:
        yield


async def stop_being_ready(app: web.Application) -> None:
    app[PIPELINE].stop_being_ready()


def add_receiver(app: web.Application, path: str, receiver: Receiver[Any]) -> None:
    app.router.add_post(path, receiver.handle, expect_handler=receiver.expect)
    refuse_other_methods(app, path, frozenset({hdrs.METH_POST}))


def add_routes(app: web.Application, settings: GatewayProcessSettings, gateway: Gateway) -> None:
    base = settings.http.base_path.rstrip("/")
    add_receiver(app, f"{base}/entered", Receiver(normalize.ENTERED, gateway))
    add_receiver(app, f"{base}/left", Receiver(normalize.EXITED, gateway))
    add_receiver(app, f"{base}/exited", Receiver(normalize.EXITED, gateway))
    add_receiver(app, settings.http.tracking_path, Receiver(normalize.TRACKING, gateway))
    for path, handler in GETS:
        app.router.add_get(path, answering_errors(handler), expect_handler=expect_anything)
        refuse_other_methods(app, path, frozenset({hdrs.METH_GET, hdrs.METH_HEAD}))
    app.router.add_route(hdrs.METH_ANY, "/{path:.*}", nothing_here, expect_handler=expect_anything)


def gateway_state(
    settings: GatewayProcessSettings, pipeline: Pipeline, tracer: Tracer | None = None
) -> Gateway:
    auth = settings.auth
    limiter = None
    if auth.rate_limit_per_s > 0:
        limiter = RateLimiter(auth.rate_limit_per_s, auth.rate_limit_burst)
    return Gateway(
        tokens=TokenTable.from_settings(auth.tokens, auth.allow_anonymous),
        pipeline=pipeline,
        metrics=Metrics.create(pipeline.status),
        max_body_bytes=settings.http.max_body_bytes,
        body_timeout_s=settings.http.body_timeout_s,
        rate_limiter=limiter,
        forward_headers=settings.http.forward_headers,
        tracer=tracer,
    )


async def openapi_json(request: web.Request) -> web.Response:
    return stamped(request, web.json_response(request.app[OPENAPI]))


GETS: tuple[tuple[str, Callable[[web.Request], Awaitable[web.Response]]], ...] = (
    ("/healthz", healthz),
    ("/readyz", readyz),
    ("/metrics", metrics),
    ("/openapi.json", openapi_json),
)


def create_app(settings: GatewayProcessSettings, tracer: Tracer | None = None) -> web.Application:
    """The gateway's app; `tracer` (`core.tracing.configured`) when tracing is on."""
    app = web.Application(client_max_size=settings.http.max_body_bytes)
    pipeline = Pipeline(settings, tracer)
    app[PIPELINE] = pipeline
    app[GATEWAY] = gateway = gateway_state(settings, pipeline, tracer)
    app[OPENAPI] = openapi.document(settings)
    app.cleanup_ctx.append(pipeline_ctx)
    app.on_shutdown.append(stop_being_ready)
    add_routes(app, settings, gateway)
    return app
