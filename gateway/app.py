"""The aiohttp application: routes, the JSON error middleware, resources in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.auth import TokenTable
from gateway.delivery import ConfirmedDelivery
from gateway.handlers import GATEWAY, Gateway, Handler, Receiver, healthz, problem, readyz
from gateway.models import Tracking, Transition
from gateway.publisher import Publisher
from gateway.settings import Settings

log = logging.getLogger(__name__)

PUBLISHER = web.AppKey("publisher", Publisher)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answer is a JSON problem, even aiohttp's own 404 and 405."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem(exc.status, exc.reason, exc.reason)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return problem(500, "Internal Server Error", "unexpected error; see the gateway log")


async def publisher_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[PUBLISHER].run(), name="amqp-publisher")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def add_routes(app: web.Application, settings: Settings) -> None:
    base = settings.http.base_path.rstrip("/")
    app.router.add_post(f"{base}/entered", Receiver("entered", Transition).handle)
    app.router.add_post(f"{base}/left", Receiver("exited", Transition).handle)
    app.router.add_post(f"{base}/exited", Receiver("exited", Transition).handle)
    app.router.add_post(settings.http.tracking_path, Receiver("tracking", Tracking).handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=settings.http.max_body_bytes)
    publisher = Publisher(settings.amqp)
    app[PUBLISHER] = publisher
    app[GATEWAY] = Gateway(
        tokens=TokenTable.from_settings(settings.auth.tokens, settings.auth.allow_anonymous),
        delivery=ConfirmedDelivery(publisher),
        max_body_bytes=settings.http.max_body_bytes,
        forward_headers=settings.http.forward_headers,
    )
    app.cleanup_ctx.append(publisher_ctx)
    add_routes(app, settings)
    return app
