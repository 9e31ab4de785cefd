"""A gateway in a subprocess, for the fault tests: start, SIGKILL, SIGTERM; and the process
groups and environment of any child a test starts.

Each start is a process group of its own (the gateway, its processes and multiprocessing's
resource tracker), and `stop` kills every group it started, so nothing outlives a test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools import procs
from devtools.stack import BIN, GATEWAY_COMMAND

GATEWAY_ARGV = (str(BIN / GATEWAY_COMMAND[0]), *GATEWAY_COMMAND[1:])
# The same gateway through its other entry point.
GATEWAY_MODULE_ARGV = (sys.executable, "-m", "gateway")


def child_environ() -> dict[str, str]:
    """This process's environment for a child, less the caller's own AIFI_* settings
    (a shell's tokens, say): a child gets exactly the settings it is given."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AIFI_")}


def is_alive(pid: int) -> bool:
    """Neither gone nor a zombie (dead, not yet reaped: an orphan waits for init)."""
    return procs.living(pid) is not None


def group_members(pgid: int) -> list[int]:
    """The live processes of a process group."""
    return [found.pid for found in procs.everyone() if found.pgrp == pgid]


def kill_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGKILL a whole process group and wait until none of it is alive."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process group {pgid} outlived SIGKILL")
        time.sleep(0.05)


class GatewayProcess:
    """One gateway (`aifi-gateway`, or `argv`) on a loopback port, with its settings in
    `env`; started as a process group of its own, with its gateway processes if it has any."""

    def __init__(
        self,
        port: int,
        env: dict[str, str],
        log_path: Path,
        argv: tuple[str, ...] = GATEWAY_ARGV,
    ) -> None:
        self.port, self.env, self.log_path, self.argv = port, env, log_path, argv
        self.process: subprocess.Popen[bytes] | None = None
        self.groups: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        here = {"AIFI_HTTP_HOST": "127.0.0.1", "AIFI_HTTP_PORT": str(self.port)}
        env = child_environ() | self.env | here
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, env=env, stdout=log, stderr=subprocess.STDOUT, process_group=0
            )
        # Only groups with someone alive: a pid, and so a pgid, is reused once it is free.
        self.groups = [g for g in self.groups if group_members(g)] + [self.process.pid]
        try:
            self.wait_alive(timeout_s)
        except BaseException:
            self.stop()  # a gateway that never came up is nobody's to stop later
            raise

    def wait_alive(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise TimeoutError("gateway did not come up")

    def kill(self) -> None:
        """SIGKILL of the gateway process alone: a crash, with no chance to flush or drain
        anything (its gateway processes, if any, are left to notice it)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """SIGKILL every process group started, and reap the gateway."""
        for pgid in self.groups:
            kill_group(pgid)
        self.groups.clear()
        if self.process is not None:
            self.process.wait(timeout=10)
