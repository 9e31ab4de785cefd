"""The presence bench's upper bound: `GET /stores/{storeId}` answered with a constant body of
the API's shape, nothing more; a module of its own, so that its process loads no more than
`bench.bare` does.

    python -m bench.presence_bare --port 8091
"""

from __future__ import annotations

import argparse
from typing import Final

import orjson
from aiohttp import web

from bench.bare import serve

BODY: Final = orjson.dumps({"storeId": 7, "occupancy": 20, "openSessions": 20, "sessions": 40})


async def store(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/stores/{storeId}", store)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.presence_bare", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    serve(create_app(), parser.parse_args(argv).port)


if __name__ == "__main__":
    main()
