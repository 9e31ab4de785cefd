"""Consumer workers for the events the gateway publishes.

A downstream team writes `async def handle(event: Event) -> None` (a `Handler`), raises
`RetryLater` or `Reject` to steer settlement, and names it in `config.yaml`; `python -m
consumers NAME` does the rest (topology, acks, retries, dead letters, reconnects, graceful
stop). `consumers.testing` builds events to test a handler with.
"""

from consumers.handler import Handler, Reject, RetryLater
from core.contract import Event

__all__ = ["Event", "Handler", "Reject", "RetryLater"]
