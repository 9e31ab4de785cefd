"""Per-consumer queues, declared idempotently at start; the same on RabbitMQ 3.10 and 4.x.

    aifi.events --<bindings>--> aifi.<name>  (quorum, delivery limit)
                                  | dead-lettered by the broker (delivery limit), at least once
                                  v
    aifi.dead ------<name>----> aifi.<name>.dead  (quorum)
    aifi.delay --<name>.<ms>--> aifi.<name>.retry.<ms>  (quorum, TTL <ms>)
                                  | expired, dead-lettered at least once
                                  v
    aifi.redeliver --<name>---> aifi.<name>

A retry goes through the delay exchange rather than back through `aifi.events`, so that
it reaches only the consumer that failed it, not every queue bound to its routing key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import aiormq
from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from gateway.publisher import declare_topology
from gateway.settings import ConsumerSettings

DELAY_EXCHANGE: Final = "aifi.delay"
REDELIVER_EXCHANGE: Final = "aifi.redeliver"
DEAD_EXCHANGE: Final = "aifi.dead"
# A name ends up in queue names and routing keys, where dots would read as separators.
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,100}")
# A quorum queue dead-letters at least once only when it refuses publishes when full.
AT_LEAST_ONCE: Final = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


class TopologyError(Exception):
    """The broker holds a queue of this name with other arguments; restarting will not help."""


@dataclass(frozen=True, slots=True)
class Topology:
    queue: AbstractQueue
    dead_queue: AbstractQueue
    delay: AbstractExchange
    redeliver: AbstractExchange
    dead: AbstractExchange


def queue_name(name: str) -> str:
    return f"aifi.{name}"


def dead_queue_name(name: str) -> str:
    return f"aifi.{name}.dead"


def delay_queue_name(name: str, delay_ms: int) -> str:
    return f"aifi.{name}.retry.{delay_ms}"


def delay_key(name: str, delay_ms: int) -> str:
    return f"{name}.{delay_ms}"


def bindings(name: str, settings: ConsumerSettings) -> tuple[str, ...]:
    return settings.bindings or (f"{name}.#",)


def backoff_ms(settings: ConsumerSettings, failures: int) -> int:
    """The wait before the attempt that follows the `failures`-th failure."""
    return min(settings.retry_max_ms, settings.retry_base_ms << (failures - 1))


def delays_ms(settings: ConsumerSettings) -> list[int]:
    """One delay queue per distinct backoff step."""
    return sorted({backoff_ms(settings, n) for n in range(1, settings.max_attempts)})


def main_arguments(name: str, settings: ConsumerSettings) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        "x-dead-letter-routing-key": name,
        **AT_LEAST_ONCE,
    }


def delay_arguments(name: str, delay_ms: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": REDELIVER_EXCHANGE,
        "x-dead-letter-routing-key": name,
        **AT_LEAST_ONCE,
    }


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"consumer name {name!r} must match {NAME_PATTERN.pattern}")
    return name


async def declare(channel: AbstractChannel, name: str, settings: ConsumerSettings) -> Topology:
    """Declare everything `name` needs; a no-op when it all exists with the same arguments."""
    events = await declare_topology(channel)
    delay, redeliver, dead = [
        await channel.declare_exchange(exchange, ExchangeType.DIRECT, durable=True)
        for exchange in (DELAY_EXCHANGE, REDELIVER_EXCHANGE, DEAD_EXCHANGE)
    ]
    queue = await _quorum(channel, queue_name(name), main_arguments(name, settings))
    for exchange, key in [(events, k) for k in bindings(name, settings)] + [(redeliver, name)]:
        await queue.bind(exchange, key)
    dead_queue = await _quorum(channel, dead_queue_name(name), {"x-queue-type": "quorum"})
    await dead_queue.bind(dead, name)
    for delay_ms in delays_ms(settings):
        await _delay_queue(channel, name, delay_ms, delay)
    return Topology(queue, dead_queue, delay, redeliver, dead)


async def _delay_queue(
    channel: AbstractChannel, name: str, delay_ms: int, exchange: AbstractExchange
) -> None:
    arguments = delay_arguments(name, delay_ms)
    queue = await _quorum(channel, delay_queue_name(name, delay_ms), arguments)
    await queue.bind(exchange, delay_key(name, delay_ms))


async def _quorum(channel: AbstractChannel, name: str, arguments: dict[str, Any]) -> AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise TopologyError(
            f"queue {name} exists with other arguments ({exc}); a queue's arguments cannot "
            "change: drain and delete it, or keep its old settings"
        ) from exc


async def delete(channel: AbstractChannel, name: str, settings: ConsumerSettings) -> None:
    """Delete the queues of `name`, messages included (tests, benchmarks, decommissioning)."""
    names = [queue_name(name), dead_queue_name(name)]
    names += [delay_queue_name(name, ms) for ms in delays_ms(settings)]
    for queue in names:
        # Quorum queues refuse if_unused/if_empty.
        await channel.queue_delete(queue, if_unused=False, if_empty=False)
