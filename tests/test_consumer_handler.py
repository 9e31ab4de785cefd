"""Loading a downstream team's handler by name, and the example handler."""

from __future__ import annotations

import orjson
import pytest

from consumers import Event, Handler, testing
from consumers.examples import print_handler
from consumers.handler import HandlerError, Handlers, Reject, load


def test_a_handler_is_loaded_by_module_and_attribute() -> None:
    handler = load("consumers.examples.print_handler:handle")
    assert handler.one is print_handler.handle
    assert handler.many is None


def test_the_public_handler_type_is_the_function_a_team_writes() -> None:
    # Checked by mypy: `from consumers import Handler` types `async def handle(event)`, and
    # a worker is given `Handlers` of it.
    handle: Handler = print_handler.handle
    assert load("consumers.examples.print_handler:handle") == Handlers(one=handle)


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("consumers.examples.print_handler", "must look like"),
        (":handle", "must look like"),
        ("consumers.nowhere:handle", "cannot import consumers.nowhere"),
        ("consumers.examples.print_handler:missing", "is not an `async def` function"),
        ("consumers.examples.print_handler:orjson", "is not an `async def` function"),
    ],
)
def test_a_bad_handler_name_is_refused_with_the_reason(spec: str, complaint: str) -> None:
    with pytest.raises(HandlerError, match=complaint):
        load(spec)


async def test_the_example_prints_transitions_and_rejects_the_rest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    entered = Event.from_body(testing.transition("entered", 7, "s1").body)
    await print_handler.handle(entered)
    line = orjson.loads(capsys.readouterr().out)
    assert line == {
        "id": entered.id,
        "kind": "entered",
        "store": 7,
        "session": "s1",
        "at": "2024-05-01T12:00:00Z",
    }
    with pytest.raises(Reject):
        await print_handler.handle(Event.from_body(testing.tracking(7, "u-1", None).body))
