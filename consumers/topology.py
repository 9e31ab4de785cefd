"""A worker's own view of its queues (see `core.topology` for the queues themselves): what
it publishes to and consumes from once it has declared them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from core.contract import (
    DEAD_EXCHANGE,
    DELAY_EXCHANGE,
    REDELIVER_EXCHANGE,
    dead_queue_name,
    delay_queue_name,
    queue_name,
)
from core.settings import ConsumerSettings
from core.topology import declare_exchanges, declare_spec, delays_ms, queue_specs

# A name ends up in queue names and routing keys, where dots would read as separators.
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,100}")


@dataclass(frozen=True, slots=True)
class Topology:
    queue: AbstractQueue
    dead_queue: AbstractQueue
    delay: AbstractExchange
    redeliver: AbstractExchange
    dead: AbstractExchange


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"consumer name {name!r} must match {NAME_PATTERN.pattern}")
    return name


async def declare(channel: AbstractChannel, name: str, settings: ConsumerSettings) -> Topology:
    """Declare everything `name` needs; a no-op when it all exists with the same arguments."""
    exchanges = await declare_exchanges(channel)
    queue, dead_queue, *_ = [
        await declare_spec(channel, spec) for spec in queue_specs(name, settings)
    ]
    return Topology(
        queue,
        dead_queue,
        exchanges[DELAY_EXCHANGE],
        exchanges[REDELIVER_EXCHANGE],
        exchanges[DEAD_EXCHANGE],
    )


async def delete(channel: AbstractChannel, name: str, settings: ConsumerSettings) -> None:
    """Delete the queues of `name`, messages included (tests, benchmarks, decommissioning)."""
    names = [queue_name(name), dead_queue_name(name)]
    names += [delay_queue_name(name, ms) for ms in delays_ms(settings)]
    for queue in names:
        # Quorum queues refuse if_unused/if_empty.
        await channel.queue_delete(queue, if_unused=False, if_empty=False)
