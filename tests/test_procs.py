"""What /proc says of a process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from devtools import procs


def test_this_process_is_alive_in_its_own_group_with_its_parent() -> None:
    found = procs.living(os.getpid())
    assert found is not None
    assert (found.ppid, found.pgrp) == (os.getppid(), os.getpgrp())
    assert found.start_ticks > 0
    assert any(p.pid == os.getpid() for p in procs.everyone())
    assert any(item.startswith(b"PATH=") for item in procs.environ(os.getpid()))


def is_zombie(pid: int) -> bool:
    found = procs.stat(pid)
    return found is not None and found.state == "Z"


def test_a_zombie_is_not_alive_and_a_reaped_process_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    # Exited, not yet waited for: a zombie.
    while not is_zombie(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert is_zombie(child.pid)
    assert procs.living(child.pid) is None
    child.wait()
    assert procs.stat(child.pid) is None
    assert procs.environ(child.pid) == []
