"""The relay's publish path against aiormq's `basic_publish`: CPU per confirmed message.

    python -m bench.publish_bench [--url AMQP_URL] [--count 20000] [--rounds 3]

Both publish the same events (AiFi's examples, normalized as the gateway does) to a
scratch durable queue with confirms, at most `IN_FLIGHT` unconfirmed at once. The
baseline is what the relay did before: one task and one `basic_publish` per event. The
gateway's way is `Publisher.write`: what is waiting leaves in one write, framed by
`gateway/frames.py`. Reported: this process's CPU per message and messages per second,
best of `rounds` (the broker's CPU is not counted; it is the same for both).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import aio_pika
import aiormq
import uvloop

from bench import DEFAULT_AMQP_URL, EXAMPLES
from bench.measure import EventQueue
from core import contract
from core.contract import Outbound
from core.settings import AmqpSettings
from gateway import normalize
from gateway.publisher import Outcomes, Publisher

IN_FLIGHT: Final = 256
BATCH: Final = 64
Run = Callable[[Sequence[Outbound]], Awaitable[None]]


EXAMPLE_KINDS: Final[tuple[tuple[normalize.Normalizer[Any], str], ...]] = (
    (normalize.ENTERED, "entered"),
    (normalize.EXITED, "left"),
    (normalize.TRACKING, "tracking"),
)


def example_outbound(normalizer: normalize.Normalizer[Any], name: str) -> Outbound:
    """What the gateway publishes for AiFi's example `name`."""
    raw = (EXAMPLES / f"{name}.json").read_bytes()
    receipt = normalize.Receipt(raw, "test", datetime.now(UTC))
    return normalizer.build(normalizer.model.model_validate_json(raw), receipt)


def outbounds(count: int, routing_key: str) -> list[Outbound]:
    """`count` events cycling through the three examples, all routed to `routing_key`."""
    examples = [example_outbound(*spec) for spec in EXAMPLE_KINDS]
    return [
        # Each its own message id: tracking ids are deterministic.
        dataclasses.replace(examples[n % 3], routing_key=routing_key, message_id=str(uuid.uuid4()))
        for n in range(count)
    ]


def properties(outbound: Outbound) -> aiormq.spec.Basic.Properties:
    return aiormq.spec.Basic.Properties(
        content_type=outbound.content_type,
        delivery_mode=2,
        message_id=outbound.message_id,
        timestamp=datetime.fromtimestamp(outbound.timestamp_s, UTC),
        headers=dict(outbound.headers),
    )


async def per_message(channel: aiormq.abc.AbstractChannel, batch: Sequence[Outbound]) -> None:
    """The baseline: a task and an awaited `basic_publish` for each event."""
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(outbound: Outbound) -> None:
        async with slots:
            await channel.basic_publish(
                outbound.body,
                exchange=contract.EXCHANGE,
                routing_key=outbound.routing_key,
                properties=properties(outbound),
                mandatory=True,
            )

    await asyncio.gather(*(one(o) for o in batch))


async def batched(publisher: Publisher, batch: Sequence[Outbound]) -> None:
    """The relay's way: a batch per write, confirms settled per ack frame."""
    in_flight, room, done = 0, asyncio.Event(), asyncio.Event()
    unsettled = len(batch)

    def settle(outcomes: Outcomes[int]) -> None:
        nonlocal in_flight, unsettled
        if failed := [n for n, error in outcomes if error is not None]:
            raise RuntimeError(f"{len(failed)} messages not confirmed")
        in_flight -= len(outcomes)
        unsettled -= len(outcomes)
        room.set()
        if not unsettled:
            done.set()

    for start in range(0, len(batch), BATCH):
        while in_flight > IN_FLIGHT - BATCH:
            room.clear()
            await room.wait()
        chunk = batch[start : start + BATCH]
        in_flight += len(chunk)
        await publisher.write([(o, start + n) for n, o in enumerate(chunk)], settle)
    await done.wait()


async def timed(run: Run, batch: Sequence[Outbound]) -> tuple[float, float]:
    """(CPU µs per message, messages per second) of this process for one run."""
    cpu, wall = time.process_time(), time.perf_counter()
    await run(batch)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu * 1e6 / len(batch), len(batch) / wall


async def measure(url: str, count: int, rounds: int) -> dict[str, tuple[float, float]]:
    routing_key = f"bench.publish.{uuid.uuid4().hex[:12]}"
    batch = outbounds(count, routing_key)
    connection = await aio_pika.connect(url)
    async with (
        Publisher(AmqpSettings(urls=(url,)), {}) as publisher,
        connection,
        connection.channel(publisher_confirms=True) as channel,
    ):
        underlay = await channel.get_underlay_channel()
        await publisher.wait_ready()
        runs: dict[str, Run] = {
            "per-message basic_publish": lambda b: per_message(underlay, b),
            "batched Publisher.write": lambda b: batched(publisher, b),
        }
        best: dict[str, tuple[float, float]] = {}
        async with EventQueue.bound(channel, routing_key):
            for _ in range(rounds):
                for name, run in runs.items():
                    figures = await timed(run, batch)
                    best[name] = min(best.get(name, figures), figures)
    return best


def report(best: dict[str, tuple[float, float]]) -> None:
    for name, (cpu_us, rate) in best.items():
        print(f"{name:<28} {cpu_us:8.1f} µs CPU/msg {rate:10,.0f} msg/s")
    (base_cpu, base_rate), (cpu, rate) = best.values()
    print(f"ratio (batched ÷ per-message): CPU {cpu / base_cpu:.2f}, rate {rate / base_rate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.publish_bench", description=__doc__)
    parser.add_argument("--url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    report(uvloop.run(measure(args.url, args.count, args.rounds)))


if __name__ == "__main__":
    main()
