"""What a handler is: the coroutine a worker calls, and the two exceptions that steer settlement.

`Handler` is the type of a downstream team's function, `async def handle(event: Event) -> None`,
the one named in `config.yaml`. `Handlers` is what a worker is given: a `Handler` for one
event and, optionally, a `BatchHandler` for several at once.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from core.contract import Event

Handler = Callable[[Event], Awaitable[None]]
BatchHandler = Callable[[Sequence[Event]], Awaitable[None]]


class RetryLater(Exception):
    """A transient failure: try again after a backoff, and dead-letter after `max_attempts`."""


class Reject(Exception):
    """A permanent failure: dead-letter now, with this exception's message as the reason."""


class HandlerError(Exception):
    """A `handler` setting that does not name an async function."""


@dataclass(frozen=True, slots=True)
class Handlers:
    """The handlers a worker applies events with.

    `one` applies a single event. `many`, if given, applies several all or nothing (one
    transaction, say): when it raises, none of them had an effect, so the worker falls back
    to `one` for each, and a single poison event cannot hold back the others.
    Delivery is at least once: `event.id` is the key that makes a handler idempotent.
    `one` may run concurrently for up to `prefetch` events.
    """

    one: Handler
    many: BatchHandler | None = None


def load(spec: str) -> Handlers:
    """The handler named `module:attribute`, e.g. `consumers.examples.print_handler:handle`."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise HandlerError(f"handler {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerError(f"handler {spec!r}: cannot import {module_name}: {exc}") from exc
    function = getattr(module, attribute, None)
    if not inspect.iscoroutinefunction(function):
        raise HandlerError(f"handler {spec!r} is not an `async def` function")
    return Handlers(one=function)
