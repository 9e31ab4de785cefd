"""The aiohttp application: routes, the JSON error middleware, resources in cleanup_ctx."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import hdrs, web

from core.settings import Settings
from gateway import events, openapi
from gateway.auth import TokenTable
from gateway.handlers import (
    GATEWAY,
    Gateway,
    Receiver,
    RequestHandler,
    healthz,
    metrics,
    problem,
    readyz,
    stamp_request_id,
)
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.ratelimit import RateLimiter

log = logging.getLogger(__name__)


PIPELINE = web.AppKey("pipeline", Pipeline)
OPENAPI = web.AppKey("openapi", dict[str, Any])


def http_problem(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's error as a JSON problem, keeping its headers (a 405's `Allow`)."""
    detail = exc.reason
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        detail = f"{exc.method} is not allowed here; allowed: {allowed}"
    elif isinstance(exc, web.HTTPNotFound):
        detail = f"nothing at {request.path}"
    response = problem(exc.status, exc.reason, detail)
    response.headers.extend(
        (name, value) for name, value in exc.headers.items() if name != hdrs.CONTENT_TYPE
    )
    return response


@web.middleware
async def json_errors(request: web.Request, handler: RequestHandler) -> web.StreamResponse:
    """Every error answer is a JSON problem, even aiohttp's own 404 and 405."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_problem(request, exc)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return problem(500, "Internal Server Error", "unexpected error; see the gateway log")


async def pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the pipeline (recovering the spool) before listening; close it after the last
    request, draining what the relay can."""
    async with app[PIPELINE]:
        yield


async def stop_being_ready(app: web.Application) -> None:
    app[PIPELINE].stop_being_ready()


def add_receiver(app: web.Application, path: str, receiver: Receiver[Any]) -> None:
    app.router.add_post(path, receiver.handle, expect_handler=receiver.expect)


def add_routes(app: web.Application, settings: Settings) -> None:
    base = settings.http.base_path.rstrip("/")
    add_receiver(app, f"{base}/entered", Receiver(events.ENTERED))
    add_receiver(app, f"{base}/left", Receiver(events.EXITED))
    add_receiver(app, f"{base}/exited", Receiver(events.EXITED))
    add_receiver(app, settings.http.tracking_path, Receiver(events.TRACKING))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)


def gateway_state(settings: Settings, pipeline: Pipeline) -> Gateway:
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
    )


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=settings.http.max_body_bytes)
    pipeline = Pipeline(settings)
    app[PIPELINE] = pipeline
    app[GATEWAY] = gateway_state(settings, pipeline)
    app[OPENAPI] = openapi.document(settings)
    app.cleanup_ctx.append(pipeline_ctx)
    app.on_shutdown.append(stop_being_ready)
    app.on_response_prepare.append(stamp_request_id)
    add_routes(app, settings)
    return app
