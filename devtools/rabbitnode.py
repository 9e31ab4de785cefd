"""Private RabbitMQ nodes for development, tests and fault injection.

A node is configured only through environment variables and files under
``base_dir / name``: it never reads /etc/rabbitmq nor writes /var/lib/rabbitmq, so several
nodes (a cluster, or a test node next to a dev node) can run side by side without Docker or
systemd. AMQP, Erlang distribution and epmd (when a node has to start it) listen on
127.0.0.1 only. Process inspection uses /proc, so this is Linux-only.

    python -m devtools.rabbitnode ensure --url amqp://guest:guest@127.0.0.1:5672/ --dir .rabbitmq
    python -m devtools.rabbitnode stop --dir .rabbitmq
    python -m devtools.rabbitnode with --url amqp://guest:guest@127.0.0.1:5672/ \
        --dir .rabbitmq -- python -m bench

`ensure` leaves its node running for a later `stop`. `with` (and `broker_for`, which the
`make run` supervisor uses) starts a node only if none answers, records itself as the
node's owner, and stops it when the command ends; `stop` leaves such a node alone while
its owner lives.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from devtools import procs

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
SERVER = RABBITMQ_BIN / "rabbitmq-server"
CTL = RABBITMQ_BIN / "rabbitmqctl"
LOOPBACK = "127.0.0.1"
DEFAULT_NAME = "aifi-dev"
MARKER = "started-by-ensure.json"
CTL_TIMEOUT_S = 120.0
DOWN_TIMEOUT_S = 30.0
# A disk alarm blocks every publisher, which on a nearly full dev disk would look like a
# gateway bug; the node log file is enough, console output would only fill server.out.
RABBITMQ_CONF = """\
disk_free_limit.absolute = 50MB
log.console = false
log.file.level = info
"""
# Erlang distribution listens on every interface unless told otherwise.
LOOPBACK_DIST_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"
NETNS_TICKTIME_S = 8
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class NodeSpec:
    """Where a node lives and listens; the same spec always finds the same data."""

    name: str
    amqp_port: int
    dist_port: int
    base_dir: Path
    extra_conf: str = ""  # rabbitmq.conf lines after the defaults, e.g. "max_message_size = 65536"
    # Elsewhere than loopback: a node at its own address, inside the network namespace
    # `netns` (a test's private network), named by its address (long node names).
    host: str = LOOPBACK
    netns: str = ""

    @property
    def on_loopback(self) -> bool:
        return self.host == LOOPBACK

    def __post_init__(self) -> None:
        # The name becomes both an Erlang node name and a directory name.
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"node name must match [A-Za-z0-9_-]+, got {self.name!r}")


class CtlError(subprocess.CalledProcessError):
    """A failed rabbitmqctl call; its message carries stderr, where the actual reason is."""

    def __str__(self) -> str:
        detail = self.stderr or self.stdout or ""
        return f"{super().__str__()}\n{detail}".rstrip()


class Node:
    """One private node. Any instance built from the same spec can control it."""

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        self._dir = spec.base_dir.resolve() / spec.name
        # Set only by the instance that launched the node, so that it can reap the launcher.
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.spec.host}:{self.spec.amqp_port}/"

    @property
    def nodename(self) -> str:
        return f"{self.spec.name}@{'localhost' if self.spec.on_loopback else self.spec.host}"

    @property
    def pid_file(self) -> Path:
        return self._dir / "rabbitmq.pid"

    @property
    def log_dir(self) -> Path:
        return self._dir / "log"

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the node (or adopt it if it already runs) and wait until it serves AMQP."""
        deadline = time.monotonic() + timeout_s
        if self.is_running():
            self._await_ready(deadline)
            return
        self._check_ports_free()
        self._prepare_files()
        self._spawn()
        try:
            self._await_ready(deadline)
        except BaseException:
            # A half-started node would hold the ports and the data of the next attempt.
            self._signal_all(signal.SIGKILL)
            self._down_within(DOWN_TIMEOUT_S)
            raise

    def kill(self) -> None:
        """Crash the node: SIGKILL, no shutdown. Its data stays for the next start()."""
        self._signal_all(signal.SIGKILL)
        self._wait_down()

    def stop(self) -> None:
        """Stop the node gracefully, escalating to signals if rabbitmqctl cannot."""
        if self.is_running():
            try:
                self._ctl(["stop"], timeout=DOWN_TIMEOUT_S)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self._signal_all(signal.SIGTERM)
            if not self._down_within(DOWN_TIMEOUT_S):
                self._signal_all(signal.SIGKILL)
        self._wait_down()

    def is_running(self) -> bool:
        return self._beam_pid() is not None or bool(self._group_members())

    def ctl(self, *args: str) -> str:
        """Run ``rabbitmqctl -n <node> args`` and return its stdout."""
        return self._ctl(list(args), timeout=CTL_TIMEOUT_S)

    def close_all_connections(self, reason: str = "test") -> None:
        # --global: every vhost on this node, not only "/".
        self.ctl("close_all_connections", "--global", reason)

    def join_cluster(self, other: Node) -> None:
        """Make this node a member of other's cluster; this node's own data is discarded."""
        for args in (["stop_app"], ["reset"], ["join_cluster", other.nodename], ["start_app"]):
            self.ctl(*args)

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the launcher output and of the node's log files, for error messages."""
        paths = [self._dir / "server.out", *sorted(self.log_dir.glob("*.log"))]
        return "\n".join(_tail(path, lines) for path in paths if path.exists())

    def _ctl(self, args: list[str], timeout: float) -> str:
        cmd = [*self._in_netns(), str(CTL), "-n", self.nodename, *args]
        done = subprocess.run(
            cmd,
            env=_ctl_env(self.spec),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise CtlError(done.returncode, cmd, done.stdout, done.stderr)
        return done.stdout

    def _check_ports_free(self) -> None:
        # Fail fast: otherwise the node dies late in boot with an obscure listener error.
        for port in (self.spec.amqp_port, self.spec.dist_port):
            if amqp_reachable(f"amqp://{self.spec.host}:{port}/", 0.5):
                raise RuntimeError(f"port {port} is already in use; cannot start {self.nodename}")

    def _prepare_files(self) -> None:
        for sub in ("mnesia", "log"):
            (self._dir / sub).mkdir(parents=True, exist_ok=True)
        (self._dir / "enabled_plugins").write_text("[].\n")
        (self._dir / "rabbitmq.conf").write_text(f"{RABBITMQ_CONF}{self.spec.extra_conf}\n")
        # Empty on purpose: shadows /etc/rabbitmq/rabbitmq-env.conf, which could rename the node.
        (self._dir / "rabbitmq-env.conf").write_text("")
        _ensure_cookie()
        # A stale pid file must not make a fresh start look like an already running node.
        self.pid_file.unlink(missing_ok=True)

    def _spawn(self) -> None:
        # Own session: the node outlives our terminal, ignores its Ctrl-C, and dies as a group.
        with (self._dir / "server.out").open("ab") as out:
            self._proc = subprocess.Popen(
                [*self._in_netns(), str(SERVER)],
                cwd=self._dir,
                env=self._node_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self._dir / "launcher.pgid").write_text(f"{self._proc.pid}\n")

    def _in_netns(self) -> list[str]:
        # `ip netns exec` execs the command in place: same pid, same process group.
        return ["ip", "netns", "exec", self.spec.netns] if self.spec.netns else []

    def _node_env(self) -> dict[str, str]:
        return {
            **_clean_env(),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": self.spec.host,
            "RABBITMQ_NODE_PORT": str(self.spec.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.spec.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self._dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self._dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self._dir / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self._dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self._dir / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": _dist_args(self.spec),
            "ERL_EPMD_ADDRESS": self.spec.host,
            "RABBITMQ_USE_LONGNAME": str(not self.spec.on_loopback).lower(),
            # A node that fails to boot dumps a large erl_crash.dump; keep it with the node.
            "ERL_CRASH_DUMP": str(self._dir / "erl_crash.dump"),
        }

    def _await_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._raise_if_dead()
            if amqp_reachable(self.url, 0.5) and self._booted(deadline):
                return
            time.sleep(0.25)
        raise RuntimeError(f"{self.nodename} did not start in time\n{self.log_tail()}")

    def _booted(self, deadline: float) -> bool:
        # The AMQP port opens shortly before boot completes; await_startup closes that gap.
        try:
            self._ctl(["await_startup"], timeout=max(1.0, deadline - time.monotonic()))
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return False
        return True

    def _raise_if_dead(self) -> None:
        code = self._proc.poll() if self._proc is not None else None
        if code is not None or (self._proc is None and not self.is_running()):
            raise RuntimeError(f"{self.nodename} exited (status {code})\n{self.log_tail()}")

    def _signal_all(self, sig: signal.Signals) -> None:
        beam = self._beam_pid()
        if beam is not None:
            # The beam first: its death is the crash; the group only sweeps up the launcher.
            with contextlib.suppress(ProcessLookupError):
                os.kill(beam, sig)
            # Give the launcher a moment to reap the beam: an orphaned beam would stay a
            # zombie forever under an init that does not reap (containers, microVMs).
            _poll(lambda: not self._group_members(), 2.0)
        pgid = self._recorded_pgid()
        if pgid is not None and self._group_members():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)

    def _wait_down(self) -> None:
        if not self._down_within(DOWN_TIMEOUT_S):
            raise RuntimeError(f"{self.nodename} still running after {DOWN_TIMEOUT_S} s")

    def _down_within(self, timeout_s: float) -> bool:
        down = _poll(lambda: not self.is_running() and not amqp_reachable(self.url, 0.2), timeout_s)
        if down:
            self._reap()
        return down

    def _reap(self) -> None:
        # Without a wait() the launcher stays a zombie for as long as this process lives.
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None

    def _beam_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._owns(pid) else None

    def _recorded_pgid(self) -> int | None:
        try:
            pgid = int((self._dir / "launcher.pgid").read_text().strip())
        except (OSError, ValueError):
            return None
        # Never our own group: killpg on it would take the caller (pytest, a shell) down too.
        return None if pgid == os.getpgrp() else pgid

    def _group_members(self) -> list[int]:
        pgid = self._recorded_pgid()
        if pgid is None:
            return []
        return [p.pid for p in procs.everyone() if p.pgrp == pgid and self._owns(p.pid)]

    def _owns(self, pid: int) -> bool:
        # Pids are reused: only a live process launched with our pid-file path is this node.
        marker = f"RABBITMQ_PID_FILE={self.pid_file}".encode()
        return procs.living(pid) is not None and marker in procs.environ(pid)


def ensure_installed() -> None:
    """Install Debian's rabbitmq-server if it is missing (needs root)."""
    if SERVER.exists():
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"{SERVER} is missing; install it: sudo apt-get install rabbitmq-server")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "rabbitmq-server"]):
        print(f"rabbitmq: running {' '.join(cmd)}", file=sys.stderr, flush=True)
        # apt's chatter goes to stderr so that our stdout stays a one-line status.
        subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, check=True)


def amqp_reachable(url: str, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at the URL's host and port."""
    try:
        with socket.create_connection(_host_port(url), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _poll(done: Callable[[], bool], timeout_s: float) -> bool:
    """Wait until done() holds; False if it still does not after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default_port = 5671 if parts.scheme == "amqps" else 5672
    return parts.hostname or "localhost", parts.port or default_port


def _clean_env() -> dict[str, str]:
    # Inherited RABBITMQ_* settings (a developer's shell, the gateway's own config) would
    # silently redirect the node or the CLI to other files or nodes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
    # The cookie lives in HOME; node and CLI must read the same one.
    env["HOME"] = str(Path.home())
    return env


def _dist_args(spec: NodeSpec) -> str:
    if spec.on_loopback:
        return LOOPBACK_DIST_ARGS
    # Distribution on the node's own address only; a tick every few seconds rather than
    # 60, so that the cluster notices a partition of a test's length.
    address = spec.host.replace(".", ",")
    return f"-kernel inet_dist_use_interface {{{address}}} -kernel net_ticktime {NETNS_TICKTIME_S}"


def _ctl_env(spec: NodeSpec) -> dict[str, str]:
    env = _clean_env()
    # A node elsewhere is reached from inside its namespace, where its address is local.
    env["RABBITMQ_CTL_ERL_ARGS"] = LOOPBACK_DIST_ARGS if spec.on_loopback else ""
    env["ERL_EPMD_ADDRESS"] = spec.host
    env["RABBITMQ_USE_LONGNAME"] = str(not spec.on_loopback).lower()
    # A failed CLI call explains itself on stderr; a crash dump in the cwd would be litter.
    env["ERL_CRASH_DUMP_SECONDS"] = "0"
    return env


def _ensure_cookie() -> None:
    """Create $HOME/.erlang.cookie if missing, so every node and the CLI share one cookie."""
    path = Path.home() / ".erlang.cookie"
    try:
        # O_EXCL: never overwrite a cookie that running nodes already use.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as cookie:
        cookie.write(secrets.token_hex(16).upper())


def _tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join([f"--- {path} ---", *text])


@dataclass(frozen=True)
class Owner:
    """The process a node belongs to. The start time tells it apart from a later process
    that happens to get the same pid."""

    pid: int
    start_ticks: int

    @classmethod
    def from_pid(cls, pid: int) -> Owner:
        found = procs.living(pid)
        if found is None:
            raise ProcessLookupError(pid)
        return cls(pid, found.start_ticks)

    @classmethod
    def this_process(cls) -> Owner:
        return cls.from_pid(os.getpid())

    def alive(self) -> bool:
        found = procs.living(self.pid)
        return found is not None and found.start_ticks == self.start_ticks

    def describe(self) -> str:
        try:
            argv = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return f"process {self.pid}"
        return f"process {self.pid} ({b' '.join(argv).decode(errors='replace').strip()})"


@dataclass(frozen=True)
class Marker:
    """What `ensure` or `broker_for` left beside a node: its ports and, for `broker_for`,
    the process that stops it again."""

    spec: NodeSpec
    owner: Owner | None


def _marker_path(base_dir: Path, name: str) -> Path:
    return base_dir / name / MARKER


def _read_marker(base_dir: Path, name: str) -> Marker | None:
    try:
        saved = json.loads(_marker_path(base_dir, name).read_text())
        spec = NodeSpec(name, int(saved["amqp_port"]), int(saved["dist_port"]), base_dir)
        owner = saved.get("owner")
        return Marker(spec, Owner(int(owner["pid"]), int(owner["start_ticks"])) if owner else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_marker(spec: NodeSpec, owner: Owner | None = None) -> None:
    path = _marker_path(spec.base_dir, spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {"amqp_port": spec.amqp_port, "dist_port": spec.dist_port}
    path.write_text(json.dumps({**saved, "owner": owner and dataclasses.asdict(owner)}))


class BrokerUnavailable(RuntimeError):
    """Nothing answers at the URL, and no private node can be started for it."""


@contextlib.contextmanager
def broker_for(url: str, base_dir: Path, name: str = DEFAULT_NAME) -> Iterator[Node | None]:
    """Make the broker at url reachable while the block runs; yield the node this process
    owns, or None when it uses a broker that was already there (and leaves it running).

    A node this function starts is recorded as this process's own, so `stop` run by any
    other command leaves it alone, and it is stopped when the block ends, however it ends.
    A node whose owner died without stopping it is taken over the same way.
    """
    base_dir = base_dir.resolve()
    node = _take_orphan(url, base_dir, name)
    if node is None and amqp_reachable(url):
        yield None
        return
    node = node or _start_owned(url, base_dir, name)
    try:
        yield node
    finally:
        node.stop()
        _marker_path(base_dir, name).unlink(missing_ok=True)


def _take_orphan(url: str, base_dir: Path, name: str) -> Node | None:
    marker = _read_marker(base_dir, name)
    if marker is None or marker.owner is None or marker.owner.alive():
        return None
    node = Node(marker.spec)
    if marker.spec.amqp_port != _host_port(url)[1] or not node.is_running():
        return None
    _write_marker(marker.spec, Owner.this_process())
    node.start()
    return node


def _start_owned(url: str, base_dir: Path, name: str) -> Node:
    host, port = _host_port(url)
    if host not in ("127.0.0.1", "localhost"):
        raise BrokerUnavailable(
            f"{host}:{port} is not reachable, and a private node can only be started "
            "for 127.0.0.1 or localhost"
        )
    ensure_installed()
    spec = NodeSpec(name, port, free_port(), base_dir)
    # Written first, so that an interrupted start still names its owner.
    _write_marker(spec, Owner.this_process())
    node = Node(spec)
    try:
        node.start()
    except BaseException:
        _marker_path(base_dir, name).unlink(missing_ok=True)
        raise
    return node


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block SIGTERM and SIGHUP (a closed terminal) raise KeyboardInterrupt, as
    Ctrl-C does, so that the same `finally` cleans up after all three. SIGINT too: a shell
    starts a background job with it ignored, and `kill -INT` must still stop the stack."""
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {sig: signal.getsignal(sig) for sig in stops}
    for sig in saved:
        signal.signal(sig, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def ignore_stop_signals() -> None:
    """Cleanup has begun: a second Ctrl-C, SIGTERM or SIGHUP must not cut it short."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _ensure(url: str, base_dir: Path, name: str) -> int:
    host, port = _host_port(url)
    if amqp_reachable(url):
        print(f"rabbitmq: reachable at {host}:{port}")
        return 0
    if host not in ("127.0.0.1", "localhost"):
        print(
            f"rabbitmq: {host}:{port} is not reachable, and a private node can only be "
            "started for 127.0.0.1 or localhost",
            file=sys.stderr,
        )
        return 2
    spec = NodeSpec(name, port, free_port(), base_dir.resolve())
    return _start_private(spec)


def _start_private(spec: NodeSpec) -> int:
    try:
        ensure_installed()
        # Written first so that `stop` can clean up even if this process is interrupted.
        _write_marker(spec)
        Node(spec).start()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"rabbitmq: cannot start private node {spec.name}: {exc}", file=sys.stderr)
        return 1
    print(
        f"rabbitmq: started private node {spec.name} on port {spec.amqp_port} "
        f"(data in {spec.base_dir})"
    )
    return 0


def _stop(base_dir: Path, name: str) -> int:
    marker = _read_marker(base_dir.resolve(), name)
    if marker is None:
        print(f"rabbitmq: no node started by 'ensure' in {base_dir}; nothing to stop")
        return 0
    if marker.owner is not None and marker.owner.alive():
        print(
            f"rabbitmq: node {name} belongs to {marker.owner.describe()}, which stops it "
            "when it ends; leaving it running",
            file=sys.stderr,
        )
        return 1
    Node(marker.spec).stop()
    _marker_path(marker.spec.base_dir, name).unlink(missing_ok=True)
    print(f"rabbitmq: stopped private node {name}")
    return 0


def _run_with(url: str, base_dir: Path, name: str, command: list[str]) -> int:
    """Run command with the broker at url reachable; stop the node if this started it."""
    try:
        with stop_signals_interrupt(), broker_for(url, base_dir, name):
            return _run_child(command)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"rabbitmq: cannot start private node {name}: {exc}", file=sys.stderr)
        return 1


def _run_child(command: list[str]) -> int:
    child = subprocess.Popen(command)
    try:
        return child.wait()
    except KeyboardInterrupt:
        ignore_stop_signals()
        child.terminate()
        return child.wait()


def _node_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise argparse.ArgumentTypeError("use letters, digits, '_' and '-' only")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.rabbitnode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="install Debian's rabbitmq-server if it is missing")
    ensure = commands.add_parser("ensure", help="make the broker at --url reachable")
    stop = commands.add_parser("stop", help="stop the node that 'ensure' started, if any")
    run_with = commands.add_parser(
        "with", help="run a command with the broker at --url reachable, then stop what it started"
    )
    run_with.add_argument("argv", nargs="+", metavar="-- COMMAND", help="the command to run")
    for sub in (ensure, run_with):
        sub.add_argument("--url", required=True, help="AMQP URL the application will use")
    for sub in (ensure, stop, run_with):
        sub.add_argument("--dir", required=True, type=Path, help="where node data lives")
        sub.add_argument(
            "--name", default=DEFAULT_NAME, type=_node_name, help="node name (without @localhost)"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "install":
        ensure_installed()
        return 0
    if args.command == "ensure":
        return _ensure(args.url, args.dir, args.name)
    if args.command == "with":
        return _run_with(args.url, args.dir, args.name, args.argv)
    return _stop(args.dir, args.name)


if __name__ == "__main__":
    sys.exit(main())
