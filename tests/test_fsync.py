"""The fsync policies of a spool on real files: group commit batches, errors reach every
waiter, the other policies answer at once."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.fsync import FsyncMode
from gateway.spool import Spool, SpoolPoisoned
from tests.support.broker import capturable
from tests.support.waiting import eventually

INTERVAL_S = 0.01


@pytest.fixture
def sync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts fdatasync calls while still making them for real."""
    calls: list[int] = []
    real = os.fdatasync

    def counting(descriptor: int) -> None:
        calls.append(descriptor)
        real(descriptor)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


@contextlib.contextmanager
def opened(directory: Path, mode: FsyncMode) -> Iterator[Spool]:
    spool = Spool(directory, 1 << 20, 1 << 24, mode, INTERVAL_S)
    spool.recover()
    try:
        yield spool
    finally:
        spool.close()


@pytest.fixture
def always(tmp_path: Path) -> Iterator[Spool]:
    with opened(tmp_path, "always") as spool:
        yield spool


async def test_group_commit_covers_concurrent_waiters_with_few_syncs(
    always: Spool, sync_calls: list[int]
) -> None:
    waiters = 200
    for n in range(waiters):
        always.append(capturable(f"fsync-{n}"))
    await asyncio.gather(*(always.durable() for _ in range(waiters)))
    assert 1 <= len(sync_calls) <= 3


async def test_a_waiter_arriving_during_a_sync_gets_a_sync_of_its_own(
    always: Spool, sync_calls: list[int]
) -> None:
    always.append(capturable("fsync-0"))
    first = asyncio.create_task(always.durable())
    await eventually(lambda: len(sync_calls) == 1, 10, "the first flush to start")
    always.append(capturable("fsync-1"))
    await asyncio.gather(first, always.durable())
    assert len(sync_calls) == 2


async def test_a_failing_disk_fails_every_waiter(
    always: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(descriptor: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fdatasync", failing)  # a dying disk cannot be caused for real here
    always.append(capturable("fsync-0"))
    results = await asyncio.gather(*(always.durable() for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)


@pytest.mark.parametrize("mode", ["interval", "never"])
async def test_other_policies_answer_without_waiting_for_a_sync(
    tmp_path: Path, sync_calls: list[int], mode: FsyncMode
) -> None:
    with opened(tmp_path, mode) as spool:
        spool.append(capturable("fsync-0"))
        await spool.durable()
        assert sync_calls == []


async def test_interval_policy_syncs_soon_after_an_append(
    tmp_path: Path, sync_calls: list[int]
) -> None:
    with opened(tmp_path, "interval") as spool:
        spool.append(capturable("fsync-0"))
        await spool.durable()
        await eventually(lambda: len(sync_calls) == 1, what="the interval's sync")


async def test_closing_the_spool_cancels_a_pending_interval_sync(
    tmp_path: Path, sync_calls: list[int]
) -> None:
    spool = Spool(tmp_path, 1 << 20, 1 << 24, "interval", fsync_interval_s=0.2)
    spool.recover()
    spool.append(capturable("fsync-0"))
    await spool.durable()
    spool.close()  # seals the segment with an fsync of its own
    await asyncio.sleep(0.4)
    assert sync_calls == []


async def test_every_flush_goes_through_one_thread_that_ends_with_the_spool(
    tmp_path: Path,
) -> None:
    with opened(tmp_path, "always") as spool:
        for n in range(5):
            spool.append(capturable(f"fsync-{n}"))
            await spool.durable()
        syncing = [t for t in threading.enumerate() if t.name == "spool-fsync"]
        assert len(syncing) == 1
    syncing[0].join(5)
    assert not syncing[0].is_alive()


async def test_a_failed_sync_poisons_the_spool_and_forgets_what_it_refused(
    tmp_path: Path, sync_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk is real; its EIO is not (tests/test_fsync_failure.py causes that one)."""
    with opened(tmp_path, "always") as spool:
        kept = spool.append(capturable("fsync-kept"))
        await spool.durable()

        def failing(descriptor: int) -> None:
            sync_calls.append(descriptor)
            raise OSError(errno.EIO, "I/O error")

        counting = os.fdatasync
        monkeypatch.setattr(os, "fdatasync", failing)
        spool.append(capturable("fsync-refused"))
        with pytest.raises(OSError, match="I/O error"):
            await spool.durable()
        assert spool.poisoned is not None
        assert "fsync failed" in spool.poisoned
        # The disk answers again (and counts): the spool does not believe it.
        monkeypatch.setattr(os, "fdatasync", counting)
        with pytest.raises(SpoolPoisoned):
            spool.append(capturable("fsync-later"))
        with pytest.raises(SpoolPoisoned):
            await spool.durable()
        assert len(sync_calls) == 2  # the good one and the failed one: never a retry
        assert spool.depth == 1
    recovered = Spool(tmp_path, 1 << 20, 1 << 24).recover()
    assert [r.outbound.message_id for r in recovered] == [kept.outbound.message_id]
