"""A downstream handler in full: print one JSON line per visit transition.

Name it in `config.yaml` and start it like a built-in worker:

    consumers:
      printer:
        handler: consumers.examples.print_handler:handle
        bindings: ["entered.#", "exited.#"]

    python -m consumers printer        # or: aifi-consumer printer

The worker acks when `handle` returns. Raise `RetryLater` for a transient failure (tried
again after a backoff, dead-lettered after `max_attempts`) and `Reject` for an event that
will never work (dead-lettered at once); any other exception counts as `RetryLater`.
Delivery is at least once: use `event.id` to make a side effect happen once.
"""

from __future__ import annotations

import sys

import orjson

from consumers import Event, Reject


async def handle(event: Event) -> None:
    if event.kind == "tracking":
        raise Reject("this handler only understands entered and exited events")
    line = {
        "id": event.id,
        "kind": event.kind,
        "store": event.data["storeId"],
        "session": event.data["sessionId"],
        "at": event.time,
    }
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()
