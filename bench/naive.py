"""The naive baseline, the way most tutorials do it.

aiohttp, stdlib `json`, a pydantic model, and an aio-pika publish awaited for its
confirm inside each request, on one channel with publisher confirms. It validates
with the gateway's own models and publishes to the same exchange with the same
routing keys, and runs on uvloop like the gateway, so that the ratios measure the
design (a broker round trip per request) and not the schema or the event loop.

    python -m bench.naive --port 8082 --amqp-url amqp://guest:guest@127.0.0.1:5672/
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractExchange
from aiohttp import web
from pydantic import BaseModel, ValidationError

from bench import DEFAULT_AMQP_URL
from bench.bare import healthz, serve
from core import contract
from core.amqp import declare_topology
from gateway.models import Tracking, Transition

EXCHANGE: Final = web.AppKey("exchange", AbstractExchange)
ReceiveHandler = Callable[[web.Request], Coroutine[Any, Any, web.Response]]


def receiver(kind: str, model: type[BaseModel]) -> ReceiveHandler:
    async def receive(request: web.Request) -> web.Response:
        try:
            document = await request.json()  # stdlib json.loads
            event = model.model_validate(document)
        except (json.JSONDecodeError, ValidationError) as exc:
            return web.json_response({"error": str(exc)}, status=422)
        body = json.dumps({"kind": kind, "data": event.model_dump(mode="json")}).encode()
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        # The request waits for the broker's confirm: a broker round trip per webhook.
        routing_key = contract.routing_key(kind, document["storeId"])
        await request.app[EXCHANGE].publish(message, routing_key=routing_key)
        return web.json_response("ok")

    return receive


def broker(url: str) -> Callable[[web.Application], AsyncIterator[None]]:
    async def connect(app: web.Application) -> AsyncIterator[None]:
        connection = await aio_pika.connect_robust(url)
        channel = await connection.channel(publisher_confirms=True)
        # Start-up only: the same topology as the gateway's, so the bench counts both alike.
        app[EXCHANGE] = await declare_topology(channel)
        yield
        await connection.close()

    return connect


def create_app(amqp_url: str) -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(broker(amqp_url))
    app.router.add_post("/webhooks/aifi/entered", receiver("entered", Transition))
    app.router.add_post("/webhooks/aifi/left", receiver("exited", Transition))
    app.router.add_post("/webhooks/aifi/tracking", receiver("tracking", Tracking))
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    args = parser.parse_args(argv)
    serve(create_app(args.amqp_url), args.port)


if __name__ == "__main__":
    main()
