"""Private PostgreSQL nodes for development, tests and fault injection, without Docker.

A node is Debian's PostgreSQL run from a data directory of its own: `initdb` once, then
`pg_ctl` with the port and the Unix socket directory given on its command line, listening
on 127.0.0.1 only, with one superuser `aifi` trusted on that address. PostgreSQL refuses to
run as root: run as root, the node runs as the `postgres` user, who must be able to reach
the directory (a path under a directory only root may enter will not do; /tmp will).

    python -m devtools.pgnode install
    python -m devtools.pgnode ensure --url postgresql://aifi@127.0.0.1:5433/postgres --dir DIR
    python -m devtools.pgnode stop --dir DIR

`ensure` starts a node only if nothing answers at the URL and leaves it running for `stop`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from devtools import procs

PG_ROOT: Final = Path("/usr/lib/postgresql")
LOOPBACK: Final = "127.0.0.1"
SUPERUSER: Final = "aifi"
RUN_AS: Final = "postgres"  # the user Debian's package creates
MARKER: Final = "port"


def bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (initdb, pg_ctl, pg_isready)."""
    found = sorted(PG_ROOT.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError(f"no PostgreSQL under {PG_ROOT}; install it: apt-get install postgresql")
    return found[-1].parent


def ensure_installed() -> None:
    """Install Debian's postgresql if no server is installed (needs root)."""
    if list(PG_ROOT.glob("*/bin/initdb")):
        return
    if os.geteuid() != 0:
        raise RuntimeError("PostgreSQL is missing; install it: sudo apt-get install postgresql")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
        print(f"postgresql: running {' '.join(cmd)}", file=sys.stderr, flush=True)
        subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, check=True)


def reachable(url: str, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at the URL's host and port."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or LOOPBACK, parts.port or 5432), timeout_s):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class PgNode:
    """One private node: its data under `base_dir`, listening on `port`."""

    base_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.base_dir.resolve() / "data"

    @property
    def log(self) -> Path:
        return self.base_dir.resolve() / "postgres.log"

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the node (initialising its data the first time) and wait until it accepts
        connections; a node that already runs is left as it is."""
        if self.is_running():
            self._await_ready(timeout_s)
            return
        if reachable(self.url, 0.5):
            raise RuntimeError(f"port {self.port} is already in use")
        self._prepare()
        options = f"-p {self.port} -k {self.base_dir.resolve()} -c listen_addresses={LOOPBACK}"
        self._pg_ctl("start", "-w", "-t", f"{timeout_s:.0f}", "-l", str(self.log), "-o", options)
        self._await_ready(timeout_s)

    def stop(self, mode: str = "fast") -> None:
        """Stop the node: `fast` (sessions ended, clean shutdown) or `immediate` (a crash:
        no checkpoint, the next start recovers from the WAL)."""
        if self.is_running():
            self._pg_ctl("stop", "-w", "-m", mode)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend it started: a crash of the whole node."""
        pid = self.pid()
        if pid is None:
            return
        # The children first noted: once the postmaster is gone they belong to init.
        group = [pid, *(p.pid for p in procs.everyone() if p.ppid == pid)]
        for member in group:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(map(procs.living, group)) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Where no init reaps orphans (a container) the postmaster stays a zombie, whose pid
        # still exists: PostgreSQL would take its lock files for a live server's.
        if procs.living(pid) is None:
            socket_file = self.base_dir.resolve() / f".s.PGSQL.{self.port}"
            for stale in (self.data / "postmaster.pid", socket_file, Path(f"{socket_file}.lock")):
                stale.unlink(missing_ok=True)

    def pid(self) -> int | None:
        """The postmaster's pid, if it runs."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if procs.living(pid) is not None else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def _prepare(self) -> None:
        base = self.base_dir.resolve()
        base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # The node's own user must own its directory (and initdb its data directory).
            owner = pwd.getpwnam(RUN_AS)
            os.chown(base, owner.pw_uid, owner.pw_gid)
        base.chmod(0o755)
        if not (self.data / "PG_VERSION").exists():
            self._run(str(bin_dir() / "initdb"), "-D", str(self.data), "-A", "trust",
                      "-U", SUPERUSER, "--no-sync")  # fmt: skip

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(bin_dir() / "pg_ctl"), "-D", str(self.data), *args)

    def _run(self, *cmd: str) -> None:
        argv = ["runuser", "-u", RUN_AS, "--", *cmd] if os.geteuid() == 0 else list(cmd)
        done = subprocess.run(
            argv,
            cwd=self.base_dir.resolve(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed: {done.stderr or done.stdout}{self._tail()}"
            )

    def _await_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        isready = [str(bin_dir() / "pg_isready"), "-q", "-h", LOOPBACK, "-p", str(self.port)]
        isready += ["-U", SUPERUSER, "-d", "postgres"]
        while subprocess.run(isready, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL on port {self.port} is not ready{self._tail()}")
            time.sleep(0.1)

    def _tail(self, lines: int = 20) -> str:
        try:
            return "\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _ensure(url: str, base_dir: Path) -> int:
    parts = urlsplit(url)
    if reachable(url):
        print(f"postgresql: reachable at {parts.hostname}:{parts.port}")
        return 0
    if parts.hostname not in (LOOPBACK, "localhost") or parts.port is None:
        print(
            "postgresql: a private node can only be started for 127.0.0.1 or localhost "
            "with an explicit port",
            file=sys.stderr,
        )
        return 2
    try:
        ensure_installed()
        base_dir.mkdir(parents=True, exist_ok=True)
        (base_dir / MARKER).write_text(f"{parts.port}\n")
        PgNode(base_dir, parts.port).start()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"postgresql: cannot start a private node: {exc}", file=sys.stderr)
        return 1
    print(f"postgresql: started a private node on port {parts.port} (data in {base_dir})")
    return 0


def _stop(base_dir: Path) -> int:
    try:
        port = int((base_dir / MARKER).read_text())
    except (OSError, ValueError):
        print(f"postgresql: no node started by 'ensure' in {base_dir}; nothing to stop")
        return 0
    PgNode(base_dir, port).stop()
    print(f"postgresql: stopped the private node on port {port}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.pgnode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="install Debian's postgresql if it is missing")
    ensure = commands.add_parser("ensure", help="make PostgreSQL at --url reachable")
    ensure.add_argument("--url", required=True, help="the ledger's postgresql:// URL")
    stop = commands.add_parser("stop", help="stop the node that 'ensure' started, if any")
    for sub in (ensure, stop):
        sub.add_argument("--dir", required=True, type=Path, help="where the node's data lives")
    args = parser.parse_args(argv)
    if args.command == "install":
        ensure_installed()
        return 0
    if args.command == "ensure":
        return _ensure(args.url, args.dir)
    return _stop(args.dir)


if __name__ == "__main__":
    sys.exit(main())
