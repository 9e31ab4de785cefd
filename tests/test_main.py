"""`aifi-gateway`'s process set-up: the collector is tuned for a server's steady load."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.__main__ import GC_THRESHOLDS, quiet_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_quiet_gc_freezes_what_is_alive_and_collects_the_young_less_often() -> None:
    gc.unfreeze()
    quiet_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == GC_THRESHOLDS
