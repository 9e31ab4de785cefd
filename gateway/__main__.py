"""`python -m gateway` / `aifi-gateway`: load settings once, then serve.

With `http.processes` > 1 this process becomes the supervisor once the settings are checked
(gateway/processes.py), so the application is imported only by `serve`, and each command
imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson

from core.settings import GatewayProcessSettings, SettingsError, settings_for
from core.tracing import TracingUnavailable

log = logging.getLogger("gateway")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="aifi-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gateway (the default)")
    inspect = commands.add_parser("spool", help="print the spool's depth, age and segments")
    inspect.add_argument("--dir", type=Path, help="spool directory (default: spool.dir)")
    commands.add_parser("asyncapi", help="print the AsyncAPI 3.0 document of the events")
    commands.add_parser("openapi", help="print the OpenAPI 3.1 document of the webhooks")
    follow = commands.add_parser("tail", help="print events as they reach the exchange")
    follow.add_argument("--binding", default="#", help="routing-key pattern (default: #)")
    return parser.parse_args(argv)


def check_auth(settings: GatewayProcessSettings) -> None:
    if settings.auth.tokens:
        log.info("tokens configured", extra={"token_names": sorted(settings.auth.tokens)})
    elif settings.auth.allow_anonymous:
        log.warning("auth.allow_anonymous is set: webhooks are accepted WITHOUT a token")
    else:
        raise SettingsError("no token configured: set AIFI_TOKENS or auth.allow_anonymous: true")


def inspect_spool(directory: Path) -> None:
    """Print depth, oldest age and segments of a spool (read-only; safe while it runs)."""
    from gateway import spool

    print(orjson.dumps(spool.inspect(directory), option=orjson.OPT_INDENT_2).decode())


@contextlib.contextmanager
def quiet_when_reader_leaves() -> Iterator[None]:
    """`aifi-gateway asyncapi | head`: when the reader of stdout goes away, exit 1 without a
    traceback (the recipe of Python's `signal` documentation)."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout once more at exit; devnull keeps that flush quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


def print_command(args: argparse.Namespace, settings: GatewayProcessSettings) -> None:
    from core import asyncapi
    from gateway import openapi, tail

    if args.command == "spool":
        inspect_spool(args.dir or settings.spool.dir)
    elif args.command == "asyncapi":
        print(orjson.dumps(asyncapi.document(), option=orjson.OPT_INDENT_2).decode())
    elif args.command == "openapi":
        print(orjson.dumps(openapi.document(settings), option=orjson.OPT_INDENT_2).decode())
    elif args.command == "tail":
        tail.run(settings.amqp, args.binding)


def run_gateway(settings: GatewayProcessSettings) -> None:
    from gateway.processes import become_supervisor, serve

    http = settings.http
    log.info("starting", extra={"host": http.host, "port": http.port, "processes": http.processes})
    if http.processes > 1:
        become_supervisor(settings)
    try:
        serve(settings)
    except TracingUnavailable as exc:
        print(f"aifi-gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    serving = args.command in (None, "serve")
    settings = settings_for("aifi-gateway", GatewayProcessSettings, check_auth if serving else None)
    if serving:
        run_gateway(settings)
        return
    with quiet_when_reader_leaves():
        print_command(args, settings)


if __name__ == "__main__":
    main()
