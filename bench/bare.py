"""The upper bound: an aiohttp handler that reads the body and answers, nothing more.

It runs on uvloop like the gateway, with the access log off like the gateway's
default, so that the gap to the gateway is the gateway's own work.

    python -m bench.bare --port 8081
"""

from __future__ import annotations

import argparse
from typing import Final

import uvloop
from aiohttp import web

from bench import LOOPBACK

OK_BODY: Final = b'"ok"'


async def receive(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=OK_BODY, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/{path:.*}", receive)
    app.router.add_get("/healthz", healthz)
    return app


def serve(app: web.Application, port: int) -> None:
    """How every bench server runs: loopback, uvloop, no access log, like the gateway."""
    web.run_app(
        app, host=LOOPBACK, port=port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    serve(create_app(), parser.parse_args(argv).port)


if __name__ == "__main__":
    main()
