"""Ledger worker against a bare aio-pika consumer: messages per second, same queue kind, same run.

    python -m bench.consumer_bench [--url AMQP_URL] [--count 20000] [--rounds 3]

Every consumer gets a quorum queue declared like a worker's (`aifi.<name>`); one publish per
event fills them all (they are bound to the same routing key), so each holds the same `count`
events. The bare consumer acks each message and does nothing else; the worker runs the
presence ledger (decode, one SQLite transaction per batch, ack after the commit); both with
the default prefetch. Each is timed from connecting to its last ack, one at a time, in
`rounds` rounds that alternate which goes first; the best round of each is reported, as
timeit does, because on a shared machine a slow round measures the neighbours.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import random
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aio_pika
import orjson
import uvloop
from aio_pika.abc import AbstractIncomingMessage

from bench import DEFAULT_AMQP_URL
from consumers import testing, topology
from consumers.ledger_handler import handlers
from consumers.runner import Worker
from core import contract
from core.settings import AmqpSettings, ConsumerSettings, LedgerSettings
from ledger.ledger import opened as open_ledger
from tests.support import broker
from tests.support.consumer import Scratch
from tests.support.ledger_schema import processed

TIMEOUT_S: Final = 300.0


class Acker:
    """The bare consumer: ack, count, nothing else."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.done = asyncio.Event()

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        self.seen += 1
        if self.seen >= self.count:
            self.done.set()


@contextlib.asynccontextmanager
async def scratch_queues(
    url: str, settings: ConsumerSettings, count: int
) -> AsyncIterator[tuple[int, list[str]]]:
    """A fresh store id and `count` worker queues bound to its entries; deleted afterwards."""
    made = Scratch(url, settings)
    store = random.randrange(10**9, 10**10)
    consumers = [made.consumer(f"entered.{store}") for _ in range(count)]
    try:
        connection = await aio_pika.connect(url)
        async with connection, connection.channel() as channel:
            for name, each in consumers:
                await topology.declare(channel, name, each)
        yield store, [name for name, _ in consumers]
    finally:
        await made.delete()


async def fill(url: str, store: int, count: int) -> None:
    events = [testing.transition("entered", store, f"b{i}") for i in range(count)]
    connection = await aio_pika.connect(url)
    async with connection, connection.channel() as channel:
        await broker.publish(channel, events)


async def bare(url: str, name: str, prefetch: int, count: int) -> float:
    """Seconds for a bare consumer to ack `count` messages of `aifi.<name>`."""
    started = time.perf_counter()
    connection = await aio_pika.connect(url)
    async with connection, connection.channel() as channel:
        await channel.set_qos(prefetch_count=prefetch)
        acker = Acker(count)
        queue = await channel.get_queue(contract.queue_name(name))
        await queue.consume(acker)
        await asyncio.wait_for(acker.done.wait(), TIMEOUT_S)
        return time.perf_counter() - started


async def worker(url: str, name: str, settings: ConsumerSettings, count: int, db: Path) -> float:
    """Seconds for the ledger worker to apply and ack `count` events of `aifi.<name>`."""
    ledger_settings = LedgerSettings(db=db)
    async with open_ledger(ledger_settings) as ledger:
        consumer = Worker(name, settings, AmqpSettings(urls=(url,)), handlers(ledger))
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(consumer.run(stop))
        async with asyncio.timeout(TIMEOUT_S):
            while consumer.state.acked < count:  # noqa: ASYNC110 - polling the worker's counter
                await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - started
        stop.set()
        await asyncio.wait_for(task, 30)
        applied = await processed(ledger_settings)
        if applied != count:
            raise RuntimeError(f"the worker applied {applied} events of {count}")
        return elapsed


async def measure(url: str, count: int, rounds: int = 3) -> dict[str, float]:
    """The best of `rounds` rounds of each consumer, on queues holding `count` events each."""
    settings = ConsumerSettings()
    seconds: dict[str, list[float]] = {"bare": [], "ledger": []}
    async with scratch_queues(url, settings, 2 * rounds) as (store, names):
        await fill(url, store, count)
        with tempfile.TemporaryDirectory() as tmp:
            for n in range(rounds):
                runs = {
                    "bare": functools.partial(bare, url, names[2 * n], settings.prefetch, count),
                    "ledger": functools.partial(
                        worker, url, names[2 * n + 1], settings, count, Path(tmp) / f"{n}.db"
                    ),
                }
                for kind in sorted(runs, reverse=n % 2 == 1):  # alternate who goes first
                    seconds[kind].append(await runs[kind]())
    return figures(count, rounds, min(seconds["bare"]), min(seconds["ledger"]))


def figures(count: int, rounds: int, bare_s: float, ledger_s: float) -> dict[str, float]:
    return {
        "count": float(count),
        "rounds": float(rounds),
        "bare_msgs_per_s": count / bare_s,
        "ledger_msgs_per_s": count / ledger_s,
        "ratio": bare_s / ledger_s,
    }


def run(amqp_url: str, count: int, rounds: int = 3) -> dict[str, float]:
    """Figures for `make bench`: msgs/s of both consumers, and ledger / bare."""
    return uvloop.run(measure(amqp_url, count, rounds))


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.consumer_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    report(run(args.url, args.count, args.rounds))


def report(result: dict[str, float]) -> None:
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(
        f"bare {result['bare_msgs_per_s']:.0f} msgs/s, "
        f"ledger {result['ledger_msgs_per_s']:.0f} msgs/s: "
        f"ledger / bare = {result['ratio']:.2f} (target >= 0.60)"
    )


if __name__ == "__main__":
    main()
