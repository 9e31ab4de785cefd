"""The lazy file system the power-cut tests stand on: what survives a cut is what POSIX
calls durable, and nothing more; an injected fsync failure reaches the caller."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.support.lazyfs import LazyFS, mounted

pytestmark = pytest.mark.slow  # mounts a file system per test: not in `make test-fast`


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[LazyFS]:
    assert os.geteuid() == 0, "mounting a FUSE file system needs root here"
    with mounted(tmp_path) as lazy:
        yield lazy


def sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, data: bytes, *, sync: bool, flags: int = os.O_CREAT) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | flags, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def test_a_synced_write_survives_a_cut_and_an_unsynced_one_does_not(fs: LazyFS) -> None:
    path = fs.mount_point / "segment"
    write(path, b"synced;", sync=True)
    sync_dir(fs.mount_point)
    write(path, b"unsynced", sync=False)
    assert path.read_bytes() == b"synced;unsynced"
    dropped = fs.cut()
    assert dropped["bytes"] == len(b"unsynced")
    assert path.read_bytes() == b"synced;"


def test_an_overwrite_is_undone_to_the_synced_bytes(fs: LazyFS) -> None:
    path = fs.mount_point / "file"
    write(path, b"0123456789", sync=True)
    sync_dir(fs.mount_point)
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, b"abc", 2)
    os.ftruncate(fd, 6)
    os.close(fd)
    assert path.read_bytes() == b"01abc5"
    fs.cut()
    assert path.read_bytes() == b"0123456789"


def test_a_file_whose_directory_was_not_synced_disappears(fs: LazyFS) -> None:
    kept, lost = fs.mount_point / "kept", fs.mount_point / "lost"
    write(kept, b"data", sync=True)
    sync_dir(fs.mount_point)
    write(lost, b"data", sync=True)  # its data is durable, its name is not
    fs.cut()
    assert sorted(os.listdir(fs.mount_point)) == ["kept"]


def test_a_name_made_durable_keeps_only_the_synced_data(fs: LazyFS) -> None:
    path = fs.mount_point / "created"
    write(path, b"never synced", sync=False)
    sync_dir(fs.mount_point)
    fs.cut()
    assert path.read_bytes() == b""


def test_a_rename_not_covered_by_a_directory_fsync_is_undone(fs: LazyFS) -> None:
    old, new = fs.mount_point / "tmp", fs.mount_point / "final"
    write(new, b"before", sync=True)
    write(old, b"after", sync=True)
    sync_dir(fs.mount_point)
    old.replace(new)
    assert new.read_bytes() == b"after"
    fs.cut()
    assert (old.read_bytes(), new.read_bytes()) == (b"after", b"before")

    old.replace(new)
    sync_dir(fs.mount_point)
    fs.cut()
    assert not old.exists()
    assert new.read_bytes() == b"after"


def test_an_unlink_not_covered_by_a_directory_fsync_is_undone(fs: LazyFS) -> None:
    sub = fs.mount_point / "sub"
    sub.mkdir()
    sync_dir(fs.mount_point)
    write(sub / "a", b"a", sync=True)
    write(sub / "b", b"b", sync=True)
    sync_dir(sub)
    (sub / "a").unlink()
    (sub / "b").unlink()
    sync_dir(sub)
    (sub / "new").write_bytes(b"")
    fs.cut()
    assert sorted(os.listdir(sub)) == []

    write(sub / "c", b"c", sync=True)
    sync_dir(sub)
    (sub / "c").unlink()
    fs.cut()
    assert (sub / "c").read_bytes() == b"c"


def test_a_directory_not_made_durable_disappears_with_its_files(fs: LazyFS) -> None:
    sub = fs.mount_point / "sub"
    sub.mkdir()
    write(sub / "file", b"x", sync=True)
    sync_dir(sub)  # the file is durable in sub, but sub itself is not in the root
    fs.cut()
    assert os.listdir(fs.mount_point) == []


def test_fsync_eio_is_reported_and_the_write_is_lost_even_after_a_later_fsync(
    fs: LazyFS,
) -> None:
    path, other = fs.mount_point / "failing", fs.mount_point / "healthy"
    write(path, b"durable;", sync=True)
    write(other, b"other", sync=False)
    sync_dir(fs.mount_point)
    fs.fail_fsync("/failing")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"doomed")
        with pytest.raises(OSError, match="Input/output error") as failed:
            os.fdatasync(fd)
        assert failed.value.errno == errno.EIO
        write(other, b";synced", sync=True)  # only the matching file fails
        assert fs.heal()["fsync_errors"] == 1
        os.fdatasync(fd)  # succeeds now, as Linux's does after reporting the error once
    finally:
        os.close(fd)
    assert path.read_bytes() == b"durable;doomed"
    fs.cut()
    # The pages the failed fsync covered were dropped: the size is durable, the bytes not.
    assert path.read_bytes() == b"durable;" + bytes(len(b"doomed"))
    assert other.read_bytes() == b"other;synced"


def test_a_directory_fsync_can_fail_too(fs: LazyFS) -> None:
    fs.fail_fsync("*")
    write(fs.mount_point / "file", b"x", sync=False)
    with pytest.raises(OSError, match="Input/output error"):
        sync_dir(fs.mount_point)
    fs.heal()
    fs.cut()
    assert os.listdir(fs.mount_point) == []


def test_it_unmounts_when_the_test_fails(tmp_path: Path) -> None:
    def fail_inside() -> None:
        with mounted(tmp_path) as lazy:
            opened.append((lazy.mount_point / "open").open("wb"))  # busy: a lazy unmount
            raise RuntimeError("inside")

    opened: list[BinaryIO] = []
    with pytest.raises(RuntimeError, match="inside"):
        fail_inside()
    opened[0].close()
    assert not os.path.ismount(tmp_path / "mnt")
