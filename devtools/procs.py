"""What /proc says of a process (Linux): one reader for the private nodes, the `make run`
stack, the tests and the bench, instead of a parser in each."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Proc:
    """The fields of `/proc/<pid>/stat` the tools use (proc(5) numbers them from 1)."""

    pid: int
    state: str  # field 3
    ppid: int  # field 4
    pgrp: int  # field 5
    start_ticks: int  # field 22: clock ticks after boot

    @property
    def alive(self) -> bool:
        """Neither a zombie nor dead: a zombie holds no port, file or lock."""
        return self.state not in ("Z", "X")


def stat(pid: int) -> Proc | None:
    """`pid`'s stat, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text.rpartition(")")[2].split()
    return Proc(pid, fields[0], int(fields[1]), int(fields[2]), int(fields[19]))


def living(pid: int) -> Proc | None:
    """`pid`'s stat while it lives; None if it is gone or a zombie."""
    found = stat(pid)
    return found if found is not None and found.alive else None


def everyone() -> Iterator[Proc]:
    """Every live process."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := living(int(entry))) is not None:
            yield found


def environ(pid: int) -> list[bytes]:
    """`pid`'s environment as `NAME=value` items; empty once it is gone (or not ours)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []
