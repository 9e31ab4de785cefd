"""The fsync policies on a real file: group commit batches, errors reach every waiter."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import fsync


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    descriptor = os.open(tmp_path / "segment", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    yield descriptor
    os.close(descriptor)


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


async def test_group_commit_covers_concurrent_waiters_with_few_syncs(
    fd: int, sync_calls: list[int]
) -> None:
    commit = fsync.GroupCommit(lambda: fd)
    waiters = 200
    for _ in range(waiters):
        os.write(fd, b"record")
    await asyncio.gather(*(commit.durable() for _ in range(waiters)))
    assert 1 <= len(sync_calls) <= 3


async def test_a_waiter_arriving_during_a_sync_gets_a_sync_of_its_own(
    fd: int, sync_calls: list[int]
) -> None:
    commit = fsync.GroupCommit(lambda: fd)
    first = asyncio.create_task(commit.durable())
    await asyncio.sleep(0)  # the first flush has started
    await asyncio.gather(first, commit.durable())
    assert len(sync_calls) == 2


async def test_a_failing_disk_fails_every_waiter(fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(descriptor: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fdatasync", failing)  # a dying disk cannot be caused for real here
    commit = fsync.GroupCommit(lambda: fd)
    results = await asyncio.gather(*(commit.durable() for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)


@pytest.mark.parametrize("mode", ["interval", "never"])
async def test_other_policies_answer_without_waiting_for_a_sync(
    fd: int, sync_calls: list[int], mode: str
) -> None:
    policy = fsync.policy(mode, lambda: fd, interval_ms=10)
    await policy.durable()
    assert sync_calls == []


async def test_interval_policy_syncs_in_the_background(fd: int, sync_calls: list[int]) -> None:
    policy = fsync.policy("interval", lambda: fd, interval_ms=10)
    task = asyncio.create_task(policy.run())
    await asyncio.sleep(0.1)
    task.cancel()
    assert len(sync_calls) >= 2
