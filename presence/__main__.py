"""`python -m presence` / `aifi-presence`: the presence API; `aifi-presence openapi` prints
its OpenAPI 3.1 document."""

from __future__ import annotations

import argparse
import logging

import orjson
from aiohttp import web

from core.settings import PresenceProcessSettings, SettingsError, settings_for
from presence import openapi
from presence.app import create_app

log = logging.getLogger("presence")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="aifi-presence", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the presence API (the default)")
    commands.add_parser("openapi", help="print the OpenAPI 3.1 document of the API")
    return parser.parse_args(argv)


def check_tokens(settings: PresenceProcessSettings) -> None:
    if not settings.presence.tokens:
        raise SettingsError("no token configured: set AIFI_PRESENCE_TOKENS (name=token,...)")


def serve(settings: PresenceProcessSettings) -> None:
    import uvloop

    presence = settings.presence
    log.info(
        "starting",
        extra={
            "host": presence.host,
            "port": presence.port,
            "token_names": sorted(presence.tokens),
        },
    )
    web.run_app(
        create_app(settings),
        host=presence.host,
        port=presence.port,
        access_log=logging.getLogger("aiohttp.access") if presence.access_log else None,
        shutdown_timeout=presence.shutdown_timeout_s,
        print=None,
        loop=uvloop.new_event_loop(),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    serving = args.command in (None, "serve")
    settings = settings_for(
        "aifi-presence", PresenceProcessSettings, check_tokens if serving else None
    )
    if args.command == "openapi":
        print(orjson.dumps(openapi.document(), option=orjson.OPT_INDENT_2).decode())
        return
    serve(settings)


if __name__ == "__main__":
    main()
