"""`python -m gateway` / `aifi-gateway`: load settings once, then serve."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from gateway import logs
from gateway.app import create_app
from gateway.settings import Settings, SettingsError, load

log = logging.getLogger("gateway")


def check_auth(settings: Settings) -> None:
    if settings.auth.tokens:
        log.info("tokens configured", extra={"token_names": sorted(settings.auth.tokens)})
    elif settings.auth.allow_anonymous:
        log.warning("auth.allow_anonymous is set: webhooks are accepted WITHOUT a token")
    else:
        raise SettingsError("no token configured: set AIFI_TOKENS or auth.allow_anonymous: true")


def serve(settings: Settings) -> None:
    import uvloop

    web.run_app(
        create_app(settings),
        host=settings.http.host,
        port=settings.http.port,
        access_log=logging.getLogger("aiohttp.access") if settings.http.access_log else None,
        shutdown_timeout=settings.http.shutdown_timeout_s,
        print=None,
        loop=uvloop.new_event_loop(),
    )


def main() -> None:
    try:
        settings = load()
        logs.configure(settings.log.level)
        check_auth(settings)
    except SettingsError as exc:
        print(f"aifi-gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("listening", extra={"host": settings.http.host, "port": settings.http.port})
    serve(settings)


if __name__ == "__main__":
    main()
