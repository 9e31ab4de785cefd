"""A file system that forgets what was not synced, as a power cut does (after Jepsen's LazyFS).

`LazyFS(backing, mount_point, control)` mounts, in a process of its own, a FUSE
pass-through of `backing`. Every change that POSIX does not yet call durable is
undoable until it is:

- a write or truncation of a file, until an `fsync`/`fdatasync` of that file;
- a create, mkdir, rename, unlink or rmdir, until an `fsync` of the directory that
  holds the name (a rename needs both names in one directory: across directories it
  answers EXDEV, which callers such as `shutil.move` handle).

`cut()` undoes all of it, newest first, then unmounts and mounts again, so that the
kernel keeps nothing of what was dropped: a power cut. Writes go to `backing` at once
(reads pass through); the undo log holds what they overwrote. A process that ends
without a cut leaves everything, as an orderly shutdown would.

`fail_fsync(pattern)` makes every fsync of a matching path (`fnmatch`, `*` for all)
answer EIO, as a failing disk does, until `heal()`. As Linux does after a writeback
error ("fsyncgate"), the writes such an fsync covered are lost at the next cut even if
a later fsync of the file succeeds: there the bytes read as they were before them
(zeros where the file had no data yet).

Run `python -m tests.support.lazyfs serve BACKING MOUNT CONTROL` to serve; tests use
`LazyFS` as a context manager, which unmounts (`fusermount3 -u`) in every case.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fnmatch
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

HIDDEN: Final = ".lazyfs"  # under `backing`: unlinked entries kept until their directory syncs
MOUNT_TIMEOUT_S: Final = 20.0
FUSE_OPTIONS: Final = {
    # Nothing cached in the kernel: reads after a cut see what the cut left.
    "direct_io": True,
    "attr_timeout": 0,
    "entry_timeout": 0,
    "negative_timeout": 0,
    "use_ino": True,
}


@dataclass
class Write:
    """What one write or truncation replaced: `old` bytes at `offset` that were durable
    (below the file's durable size), and how far it reached."""

    offset: int
    old: bytes
    end: int


@dataclass
class FileUndo:
    """The unsynced changes of one file (inode), on a descriptor of its own that stays
    valid across renames and unlinks."""

    fd: int
    durable_size: int
    pending: list[Write] = field(default_factory=list)
    lost: list[Write] = field(default_factory=list)  # covered by an fsync that failed

    def revert(self) -> int:
        """Back to what is durable; the bytes of `lost` writes as they were before them."""
        dropped = sum(w.end - w.offset for w in self.pending + self.lost)
        for write in reversed(self.pending):
            os.pwrite(self.fd, write.old, write.offset)
        os.ftruncate(self.fd, self.durable_size)
        for write in reversed(self.lost):
            zeros = max(0, min(write.end, self.durable_size) - write.offset - len(write.old))
            os.pwrite(self.fd, write.old + bytes(zeros), write.offset)
        os.close(self.fd)
        return dropped


@dataclass
class NameUndo:
    """One namespace change in the directory `dir_ino`, and how to take it back."""

    dir_ino: int
    undo: Callable[[], None]
    commit: Callable[[], None]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class Lazy:
    """The FUSE operations (mfusepy calls them by name): a pass-through with an undo log."""

    use_ns = True

    def __init__(self, backing: Path) -> None:
        self.backing = backing
        self.hidden = backing / HIDDEN
        shutil.rmtree(self.hidden, ignore_errors=True)  # a past run's deletions are final
        self.hidden.mkdir()
        self.mutex = threading.Lock()
        self.files: dict[int, FileUndo] = {}
        self.names: list[NameUndo] = []
        self.failing: str | None = None
        self.fsync_errors = 0
        self._graves = 0

    # -- paths -----------------------------------------------------------------------

    def real(self, path: str) -> Path:
        if path.lstrip("/").split("/")[0] == HIDDEN:
            raise OSError(errno.ENOENT, "no such file")
        return self.backing / path.lstrip("/")

    def dir_ino(self, path: str) -> int:
        return os.stat(self.real(path).parent).st_ino

    def grave(self) -> Path:
        self._graves += 1
        return self.hidden / str(self._graves)

    # -- data --------------------------------------------------------------------------

    def before_change(self, fd: int, offset: int, end: int) -> None:
        """Keep what a write or truncation of [offset, end) replaces, if it was durable."""
        ino = os.fstat(fd).st_ino
        undo = self.files.get(ino)
        if undo is None:
            undo = self.files[ino] = FileUndo(os.dup(fd), os.fstat(fd).st_size)
        old = os.pread(fd, max(0, min(end, undo.durable_size) - offset), offset)
        undo.pending.append(Write(offset, old, end))

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.mutex:
            self.before_change(fh, offset, offset + len(data))
            return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        with self.mutex:
            fd = os.open(self.real(path), os.O_RDWR) if fh is None else fh
            try:
                self.before_change(fd, length, max(length, os.fstat(fd).st_size))
                os.ftruncate(fd, length)
            finally:
                if fh is None:
                    os.close(fd)

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        with self.mutex:
            undo = self.files.get(os.fstat(fh).st_ino)
            if self.fails(path):
                if undo is not None:  # the kernel drops the pages: a retry will not save them
                    undo.lost += undo.pending
                    undo.pending = []
                raise OSError(errno.EIO, "fsync failed (injected)")
            if undo is not None:
                undo.pending = []
                undo.durable_size = os.fstat(fh).st_size
                if not undo.lost:
                    os.close(self.files.pop(os.fstat(fh).st_ino).fd)

    def fails(self, path: str) -> bool:
        failing = self.failing is not None and fnmatch.fnmatch(path, self.failing)
        self.fsync_errors += failing
        return failing

    # -- names -------------------------------------------------------------------------

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        with self.mutex:
            real = self.real(path)
            fd = os.open(real, backing_flags(flags) | os.O_CREAT, mode)
            self.names.append(NameUndo(self.dir_ino(path), real.unlink, _noop))
            return fd

    def mkdir(self, path: str, mode: int) -> None:
        with self.mutex:
            real = self.real(path)
            os.mkdir(real, mode)
            self.names.append(NameUndo(self.dir_ino(path), lambda: shutil.rmtree(real), _noop))

    def unlink(self, path: str) -> None:
        with self.mutex:
            self.bury(path)

    def rmdir(self, path: str) -> None:
        with self.mutex:
            if os.listdir(self.real(path)):
                raise OSError(errno.ENOTEMPTY, "directory not empty")
            self.bury(path)

    def bury(self, path: str) -> None:
        """Unlink by moving the entry aside: it comes back at a cut, goes when its
        directory syncs."""
        real, grave = self.real(path), self.grave()
        dir_ino = self.dir_ino(path)
        os.rename(real, grave)
        self.names.append(NameUndo(dir_ino, lambda: os.rename(grave, real), lambda: _remove(grave)))

    def rename(self, old: str, new: str) -> None:
        with self.mutex:
            source, target = self.real(old), self.real(new)
            if source.parent != target.parent:
                raise OSError(errno.EXDEV, "lazyfs renames within one directory only")
            replaced: Path | None = None
            if os.path.lexists(target):
                replaced = self.grave()
                os.rename(target, replaced)
            os.rename(source, target)
            self.names.append(
                NameUndo(
                    self.dir_ino(new),
                    lambda: _unrename(source, target, replaced),
                    lambda: _forget(replaced),
                )
            )

    def fsyncdir(self, path: str, datasync: int, fh: int) -> None:
        with self.mutex:
            if self.fails(path):
                raise OSError(errno.EIO, "fsync failed (injected)")
            ino = os.stat(self.real(path)).st_ino
            kept = []
            for change in self.names:
                if change.dir_ino == ino:
                    change.commit()
                else:
                    kept.append(change)
            self.names = kept

    # -- the cut -----------------------------------------------------------------------

    def cut(self) -> dict[str, int]:
        """Drop everything not durable, newest change first."""
        with self.mutex:
            files, names = self.files, self.names
            self.files, self.names = {}, []
            dropped = sum(undo.revert() for undo in files.values())
            for change in reversed(names):
                with contextlib.suppress(FileNotFoundError):  # gone with a directory undone
                    change.undo()
            return {"files": len(files), "bytes": dropped, "names": len(names)}

    # -- plain pass-through ------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self.real(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino")
        found: dict[str, Any] = {key: getattr(st, key) for key in keys}
        found |= {key: getattr(st, f"{key}_ns") for key in ("st_atime", "st_mtime", "st_ctime")}
        return found

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        """Each entry with its inode number: `use_ino` is on, and readdir(3) skips an
        entry whose number is 0."""
        with os.scandir(self.real(path)) as entries:
            found = [
                (e.name, {"st_ino": e.inode(), "st_mode": e.stat(follow_symlinks=False).st_mode})
                for e in entries
                if not (path == "/" and e.name == HIDDEN)
            ]
        return [(name, attrs, 0) for name, attrs in found]

    def open(self, path: str, flags: int) -> int:
        if flags & os.O_TRUNC:
            self.truncate(path, 0)
        return os.open(self.real(path), backing_flags(flags))

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def opendir(self, path: str) -> int:
        self.real(path)
        return 0

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self.real(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self.real(path), uid, gid)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        if times is None:
            os.utime(self.real(path))
        else:
            os.utime(self.real(path), ns=times)

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.real(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files")
        return {key: getattr(st, key) for key in keys} | {"f_frsize": st.f_frsize}


def backing_flags(flags: int) -> int:
    """Read-write (the undo log reads what a write replaces), never appending (the kernel
    gives every write its offset, which pwrite on an O_APPEND descriptor would ignore)."""
    dropped = os.O_ACCMODE | os.O_TRUNC | os.O_CREAT | os.O_EXCL | os.O_APPEND
    return (flags & ~dropped) | os.O_RDWR


def _noop() -> None:
    return None


def _forget(replaced: Path | None) -> None:
    if replaced is not None:
        _remove(replaced)


def _unrename(source: Path, target: Path, replaced: Path | None) -> None:
    os.rename(target, source)
    if replaced is not None:
        os.rename(replaced, target)


# -- the control channel: one JSON line in, one out --------------------------------------


def serve_control(lazy: Lazy, path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    threading.Thread(target=_accept, args=(lazy, listener), daemon=True).start()


def _accept(lazy: Lazy, listener: socket.socket) -> None:
    while True:
        connection, _ = listener.accept()
        with connection, connection.makefile("rwb") as stream:
            request = json.loads(stream.readline())
            stream.write(json.dumps(_command(lazy, request)).encode() + b"\n")
            stream.flush()


def _command(lazy: Lazy, request: dict[str, Any]) -> dict[str, Any]:
    command = request["command"]
    if command == "cut":
        return lazy.cut()
    with lazy.mutex:
        if command == "fail-fsync":
            lazy.failing = str(request["pattern"])
        elif command == "heal":
            lazy.failing = None
        return {"fsync_errors": lazy.fsync_errors, "unsynced_files": len(lazy.files)}


def serve(backing: Path, mount_point: Path, control: Path) -> None:
    import mfusepy  # only the served process needs libfuse

    lazy = Lazy(backing)
    control.unlink(missing_ok=True)
    serve_control(lazy, control)
    mfusepy.FUSE(lazy, str(mount_point), foreground=True, nothreads=True, **FUSE_OPTIONS)


# -- the tests' side -----------------------------------------------------------------------


class LazyFS:
    """`backing` mounted lazily at `mount_point` by a process of its own (a process group,
    so that nothing a test kills takes it along); unmounted and stopped on exit."""

    def __init__(self, backing: Path, mount_point: Path, control: Path, log: Path) -> None:
        self.backing, self.mount_point, self.control, self.log = (
            backing,
            mount_point,
            control,
            log,
        )
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LazyFS:
        self.mount()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unmount()

    def mount(self) -> None:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount_point.mkdir(parents=True, exist_ok=True)
        self.control.unlink(missing_ok=True)  # a past mount's: ready means a new one
        argv = [sys.executable, "-m", "tests.support.lazyfs", "serve"]
        argv += [str(self.backing), str(self.mount_point), str(self.control)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, process_group=0, cwd=_ROOT
            )
        try:
            _wait(lambda: os.path.ismount(self.mount_point) and self.control.exists(), self)
        except BaseException:
            self.unmount()
            raise

    def unmount(self) -> None:
        """Unmount (lazily if still busy) and stop the serving process; safe to repeat."""
        if os.path.ismount(self.mount_point):
            done = subprocess.run(["fusermount3", "-u", str(self.mount_point)], check=False)
            if done.returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(self.mount_point)], check=False)
        process, self.process = self.process, None
        if process is None:
            return
        try:
            # After a lazy unmount it serves until the last file closes: not worth waiting.
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=10)

    def command(self, command: str, **arguments: str) -> dict[str, int]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(30)
            connection.connect(str(self.control))
            connection.sendall(json.dumps({"command": command, **arguments}).encode() + b"\n")
            with connection.makefile("rb") as answer:
                reply: dict[str, int] = json.loads(answer.readline())
        return reply

    def cut(self) -> dict[str, int]:
        """A power cut: drop what is not durable, then mount again (nothing must hold a
        file of the mount open: kill its users first). What was dropped."""
        dropped = self.command("cut")
        self.unmount()
        self.mount()
        return dropped

    def fail_fsync(self, pattern: str = "*") -> None:
        """EIO to every fsync of a path (inside the mount, from "/") matching `pattern`."""
        self.command("fail-fsync", pattern=pattern)

    def heal(self) -> dict[str, int]:
        return self.command("heal")


_ROOT: Final = Path(__file__).resolve().parents[2]


def _wait(ready: Callable[[], bool], fs: LazyFS) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT_S
    while not ready():
        if fs.process is not None and fs.process.poll() is not None:
            raise RuntimeError(f"lazyfs exited: {fs.log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError("lazyfs did not mount")
        time.sleep(0.05)


@contextlib.contextmanager
def mounted(base: Path) -> Iterator[LazyFS]:
    """A lazy file system over `base/disk` at `base/mnt`, its log in `base/lazyfs.log`."""
    with LazyFS(base / "disk", base / "mnt", base / "lazyfs.sock", base / "lazyfs.log") as fs:
        yield fs


def main() -> None:
    parser = argparse.ArgumentParser(prog="lazyfs")
    commands = parser.add_subparsers(dest="command", required=True)
    served = commands.add_parser("serve")
    for name in ("backing", "mount_point", "control"):
        served.add_argument(name, type=Path)
    args = parser.parse_args()
    serve(args.backing, args.mount_point, args.control)


if __name__ == "__main__":
    main()
