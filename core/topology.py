"""The consumers' queues as data, and their declaration: the same on RabbitMQ 3.10 and 4.x.

    aifi.events --<bindings>--> aifi.<name>  (quorum, delivery limit)
                                  | dead-lettered by the broker (delivery limit), at least once
                                  v
    aifi.dead ------<name>----> aifi.<name>.dead  (quorum, never drops)
    aifi.delay --<name>.<ms>--> aifi.<name>.retry.<ms>  (quorum, TTL <ms>)
                                  | expired, dead-lettered at least once
                                  v
    aifi.redeliver --<name>---> aifi.<name>

A retry goes through the delay exchange rather than back through `aifi.events`, so that
it reaches only the consumer that failed it, not every queue bound to its routing key.

The workers declare their own queues at start, the gateway those of every configured
consumer at each connection (so that nothing it accepts before a worker first runs finds
no queue), and `aifi-consumer migrate` brings older queues to these arguments: all three
from the specs here, so that they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiormq
from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from core import contract
from core.amqp import KEEP_DELIVERY_LIMIT, UNROUTED_ARGUMENTS, declare_topology
from core.contract import (
    DEAD_EXCHANGE,
    DELAY_EXCHANGE,
    REDELIVER_EXCHANGE,
    dead_queue_name,
    delay_queue_name,
    queue_name,
)
from core.settings import ConsumerSettings

# A quorum queue dead-letters at least once only when it refuses publishes when full.
AT_LEAST_ONCE: Final = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
# Dead letters are returned when a replay fails or an operator peeks with requeue; with no
# explicit limit, RabbitMQ 4.x deletes one at its 21st return.
DEAD_ARGUMENTS: Final[dict[str, Any]] = {
    "x-queue-type": "quorum",
    "x-delivery-limit": KEEP_DELIVERY_LIMIT,
}


class TopologyError(Exception):
    """The broker holds a queue of this name with other arguments; restarting will not help."""


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue as this release declares it: its arguments and its bindings."""

    name: str
    arguments: dict[str, Any]
    bindings: tuple[tuple[str, str], ...]  # (exchange, routing key)


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


def queue_specs(name: str, settings: ConsumerSettings) -> list[QueueSpec]:
    """The queues of consumer `name`: its own first, then its dead letters, then delays."""
    keys = bindings(name, settings)
    main = [(contract.EXCHANGE, key) for key in keys] + [(REDELIVER_EXCHANGE, name)]
    specs = [
        QueueSpec(queue_name(name), main_arguments(name, settings), tuple(main)),
        QueueSpec(dead_queue_name(name), dict(DEAD_ARGUMENTS), ((DEAD_EXCHANGE, name),)),
    ]
    for ms in delays_ms(settings):
        binding = ((DELAY_EXCHANGE, delay_key(name, ms)),)
        specs.append(QueueSpec(delay_queue_name(name, ms), delay_arguments(name, ms), binding))
    return specs


def all_specs(consumers: Mapping[str, ConsumerSettings]) -> list[QueueSpec]:
    """The queues of every consumer in `consumers`."""
    return [spec for name, settings in consumers.items() for spec in queue_specs(name, settings)]


def unrouted_spec() -> QueueSpec:
    """The gateway's `aifi.unrouted`, as `core.amqp.declare_topology` declares it."""
    binding = ((contract.UNROUTED_EXCHANGE, contract.UNROUTED_QUEUE),)
    return QueueSpec(contract.UNROUTED_QUEUE, dict(UNROUTED_ARGUMENTS), binding)


async def declare_exchanges(channel: AbstractChannel) -> dict[str, AbstractExchange]:
    """Every exchange the consumers use, by name."""
    exchanges = {contract.EXCHANGE: await declare_topology(channel)}
    for exchange in (DELAY_EXCHANGE, REDELIVER_EXCHANGE, DEAD_EXCHANGE):
        exchanges[exchange] = await channel.declare_exchange(
            exchange, ExchangeType.DIRECT, durable=True
        )
    return exchanges


async def declare_spec(channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
    """Declare `spec` and apply its bindings (its exchanges must exist).

    Raises `TopologyError` if the queue exists with other arguments; the broker has then
    closed `channel`.
    """
    try:
        queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise TopologyError(
            f"queue {spec.name} exists with other arguments ({exc}); a queue's arguments "
            "cannot change in place: stop its workers and run `aifi-consumer migrate`"
        ) from exc
    return await bind(queue, spec)


async def bind_existing(channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
    """Apply the bindings of `spec` to its queue as it exists, whatever its arguments."""
    return await bind(await channel.declare_queue(spec.name, passive=True), spec)


async def bind(queue: AbstractQueue, spec: QueueSpec) -> AbstractQueue:
    for exchange, key in spec.bindings:
        await queue.bind(exchange, key)
    return queue
