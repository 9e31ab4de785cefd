"""`python -m consumers NAME` (`aifi-consumer NAME`): run the worker NAME until SIGTERM.

`aifi-consumer replay NAME [--limit N]` moves NAME's dead letters back to its queue.
`aifi-consumer migrate [NAME ...]` gives existing queues the arguments this release declares.
`aifi-consumer replay-unrouted [--limit N]` publishes what waits in `aifi.unrouted` again.
Settings are loaded once, here, and handed down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Final

import orjson
import uvloop

from consumers import health, ledger_handler
from consumers.handler import HandlerError, Handlers, load
from consumers.migrate import MigrationError, migrate
from consumers.replay import replay, replay_unrouted
from consumers.runner import Worker
from consumers.state import ConsumerState
from consumers.topology import check_name
from core import tracing
from core.aio import Wait, backing_off
from core.amqp import BROKER_ERRORS
from core.contract import UNROUTED_QUEUE
from core.settings import (
    BUILT_IN_CONSUMERS,
    ConsumerProcessSettings,
    ConsumerSettings,
    SettingsError,
    configured,
)
from core.topology import TopologyError
from core.tracing import TracingUnavailable
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.ledger import Outage, opened

log = logging.getLogger("consumers")

USAGE: Final = (
    "aifi-consumer NAME\n       aifi-consumer replay NAME [--limit N]"
    "\n       aifi-consumer migrate [NAME ...]"
    "\n       aifi-consumer replay-unrouted [--limit N]"
)
COMMANDS: Final = ("replay", "migrate", "replay-unrouted")
LEDGER_RETRY_MAX_S: Final = 5.0


class Stopped(Exception):
    """Told to stop before the worker could start."""


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="aifi-consumer",
        usage=USAGE,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command = argv[0] if argv[:1] and argv[0] in COMMANDS else "run"
    if command == "migrate":
        parser.add_argument("names", nargs="*", help="default: the built-in and configured ones")
    elif command != "replay-unrouted":
        parser.add_argument(
            "name", help=f"consumer name: {', '.join(BUILT_IN_CONSUMERS)} or one in config"
        )
    if command in ("replay", "replay-unrouted"):
        parser.add_argument("--limit", type=int, default=None, help="move at most N messages")
    args = parser.parse_args(argv if command == "run" else argv[1:])
    args.command = command
    return args


def all_consumers(settings: ConsumerProcessSettings) -> list[str]:
    """The built-in consumers and the configured ones."""
    return sorted({*BUILT_IN_CONSUMERS, *settings.consumers})


def consumer_settings(settings: ConsumerProcessSettings, name: str) -> ConsumerSettings:
    """`consumers.<name>`; the built-in workers need no entry."""
    try:
        check_name(name)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return settings.consumer(name)


@contextlib.asynccontextmanager
async def handler_for(
    consumer: ConsumerSettings,
    settings: ConsumerProcessSettings,
    state: ConsumerState,
    stop: asyncio.Event,
) -> AsyncIterator[Handlers]:
    """The consumer's own handler if it names one, else the presence ledger's."""
    if consumer.handler:
        yield load(consumer.handler)
        return
    state.starting = "opening ledger"
    outage = Outage(waiting_for_database(state, stop), database_back(state))
    async with opened(settings.ledger, waiting_for_ledger(state, stop), outage) as ledger:
        state.starting = None
        log.info("ledger open", extra={"consumer": state.consumer, "db": ledger.where})
        yield ledger_handler.handlers(ledger)


def waiting_for_ledger(state: ConsumerState, stop: asyncio.Event) -> Wait:
    """Back off while the ledger cannot be opened yet (another process holds the SQLite
    file locked; PostgreSQL is down or starting up), saying so in the log and on /healthz;
    raise `Stopped` if told to stop."""

    def report(exc: Exception, pause_s: float) -> None:
        state.starting = f"opening ledger: {exc}, retrying in {pause_s:g} s"
        log.warning(
            "ledger busy; retrying",
            extra={"consumer": state.consumer, "error": str(exc), "retry_in_s": pause_s},
        )

    return backing_off(LEDGER_RETRY_MAX_S, stop, report, lambda exc: Stopped())


def waiting_for_database(state: ConsumerState, stop: asyncio.Event) -> Wait:
    """Back off while the ledger's database is away mid-stream: the batch stays in hand,
    unacked, and /healthz answers 503 saying why. Told to stop, give the batch up: it fails
    as an attempt and goes back through the retry queues, nothing lost."""

    def report(exc: Exception, pause_s: float) -> None:
        state.waiting = f"ledger unavailable: {exc}, retrying in {pause_s:g} s"

    def stopped(exc: Exception) -> Exception:
        return LedgerUnavailable(f"stopping while the ledger is unavailable: {exc}")

    return backing_off(LEDGER_RETRY_MAX_S, stop, report, stopped)


def database_back(state: ConsumerState) -> Callable[[], None]:
    def over() -> None:
        state.waiting = None
        log.info("ledger available again", extra={"consumer": state.consumer})

    return over


async def serve(settings: ConsumerProcessSettings, name: str, consumer: ConsumerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    state = ConsumerState(name)
    # Entered in order, left in reverse: /healthz answers while the ledger opens, and the
    # worker settles and closes before the rest go.
    with (
        contextlib.suppress(Stopped),
        tracing.configured(settings.tracing, f"aifi-consumer-{name}") as tracer,
    ):
        async with (
            health.serving(state, consumer.health_host, consumer.health_port),
            handler_for(consumer, settings, state, stop) as handler,
        ):
            if not stop.is_set():  # a stop that came while the ledger opened
                worker = Worker(name, consumer, settings.amqp, handler, state, tracer)
                await worker.run(stop)
    log.info("stopped", extra=state.snapshot())


async def replay_and_report(
    settings: ConsumerProcessSettings, name: str, consumer: ConsumerSettings, limit: int | None
) -> None:
    moved = await replay(name, consumer, settings.amqp, limit)
    sys.stdout.write(orjson.dumps({"consumer": name, "moved": moved}).decode() + "\n")


async def replay_unrouted_and_report(
    settings: ConsumerProcessSettings, consumers: dict[str, ConsumerSettings], limit: int | None
) -> None:
    moved = await replay_unrouted(settings.amqp, consumers, limit)
    sys.stdout.write(orjson.dumps({"queue": UNROUTED_QUEUE, "moved": moved}).decode() + "\n")


async def migrate_and_report(
    settings: ConsumerProcessSettings, consumers: dict[str, ConsumerSettings]
) -> None:
    moved = await migrate(settings.amqp, consumers)
    sys.stdout.write(orjson.dumps({"migrated": moved}).decode() + "\n")


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    uvloop.run(coroutine)


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        settings = configured(ConsumerProcessSettings)
        if args.command == "migrate":
            names = args.names or all_consumers(settings)
            run(migrate_and_report(settings, {n: consumer_settings(settings, n) for n in names}))
            return
        if args.command == "replay-unrouted":
            consumers = {n: consumer_settings(settings, n) for n in all_consumers(settings)}
            run(replay_unrouted_and_report(settings, consumers, args.limit))
            return
        consumer = consumer_settings(settings, args.name)
        if args.command == "replay":
            run(replay_and_report(settings, args.name, consumer, args.limit))
        else:
            run(serve(settings, args.name, consumer))
    except (SettingsError, HandlerError, TopologyError, MigrationError, TracingUnavailable) as exc:
        print(f"aifi-consumer: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (LedgerError, health.HealthPortError) as exc:
        print(f"aifi-consumer: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except BROKER_ERRORS as exc:
        print(f"aifi-consumer: broker unavailable: {exc!r}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
