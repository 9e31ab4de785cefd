"""AMQP from inside a private engine's namespace, where the compose network's brokers are
reachable and nothing is published: `python -m tests.support.nsamqp COMMAND URL [ARGS]`,
started with `nsenter --net=...` by the compose tests.

- `old-queue URL NAME ROUTING_KEY`: declare queue NAME as an earlier release did (a quorum
  queue with no delivery limit and no dead-lettering), bound to the events exchange;
- `depth URL NAME`: print the number of messages in queue NAME.
"""

from __future__ import annotations

import asyncio
import sys

import aio_pika
from aiormq.abc import FieldTable

from core import contract
from core.amqp import declare_topology

EARLIER_ARGUMENTS: FieldTable = {"x-queue-type": "quorum"}


async def old_queue(url: str, name: str, routing_key: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection, connection.channel() as channel:
        await declare_topology(channel)
        queue = await channel.declare_queue(name, durable=True, arguments=EARLIER_ARGUMENTS)
        await queue.bind(contract.EXCHANGE, routing_key)


async def depth(url: str, name: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection, connection.channel() as channel:
        queue = await channel.declare_queue(name, passive=True)
        print(queue.declaration_result.message_count)


def main(argv: list[str]) -> int:
    command, url, *args = argv
    if command == "old-queue":
        asyncio.run(old_queue(url, args[0], args[1]))
    elif command == "depth":
        asyncio.run(depth(url, args[0]))
    else:
        print(f"unknown command {command}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
