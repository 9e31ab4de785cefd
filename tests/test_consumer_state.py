"""What a worker is doing, as its runner and settlement write it."""

from __future__ import annotations

import pytest

from consumers.state import ConsumerState


def test_timing_counts_each_call_and_its_duration_even_when_it_fails() -> None:
    state = ConsumerState("entered")
    with state.timing():
        pass
    with pytest.raises(RuntimeError, match="handler broke"), state.timing():
        raise RuntimeError("handler broke")
    assert state.handler_calls == 2
    assert state.handler_seconds >= 0


def test_a_snapshot_is_a_copy_the_worker_goes_on_writing_apart_from() -> None:
    state = ConsumerState("tracking", queued={"aifi.tracking": 2})
    snapshot = state.snapshot()
    state.acked += 1
    state.queued["aifi.tracking"] = 0
    assert (snapshot["consumer"], snapshot["acked"], snapshot["queued"]) == (
        "tracking",
        0,
        {"aifi.tracking": 2},
    )
