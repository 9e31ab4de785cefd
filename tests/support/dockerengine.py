"""A private Docker engine in a network namespace of its own, for the compose tests.

`dockerd` runs inside a namespace the engine makes (`aifi-dk-<tag>`), joined to the host by
a veth pair on a private /30: the namespace's default route is the host side, and the host
masquerades that /30, so builds reach the package registries as the host does. Whatever
the engine publishes answers at the namespace's address only, so a test stack never meets
a `make run` (8080, 8090, 5672) or another engine on this machine, and no two engines share
a docker0 or an iptables table.

Image data (stand-ins, built layers) lives in a cache directory outside the clone, reused
by the next run; no container, network or volume outlives the engine. A run that was
killed leaves a run directory whose owner is dead: the next engine tears it down first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools import procs

RUN_ROOT = Path("/tmp")
PREFIX = "aifi-dk-"
# Set in the engine's environment, inherited by its containerd and shims: how a teardown
# finds every process of one engine, whatever became of its process groups.
ENGINE_MARK = "AIFI_TEST_DOCKER_ENGINE"
NETNS_DIR = Path("/var/run/netns")


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aifi-gateway" / "docker"


class EngineUnavailable(RuntimeError):
    """The engine (or its namespace) could not be started here."""


@dataclass(frozen=True)
class Engine:
    """A running engine: `env` for the docker clients, `address` where published ports answer."""

    tag: str
    run_dir: Path
    data_root: Path
    address: str
    env: dict[str, str]
    daemon: subprocess.Popen[bytes]

    def answers(self) -> bool:
        try:
            self.docker("version", "--format", "{{.Server.Version}}", timeout_s=30)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return False
        return True

    def docker(self, *args: str, timeout_s: float = 120, check: bool = True) -> str:
        done = subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout_s
        )
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(
                done.returncode, done.args, done.stdout, done.stderr
            )
        return done.stdout

    def ids(self, kind: str, *filters: str) -> list[str]:
        """Ids of the engine's containers, networks or volumes (`kind`), filtered."""
        listing = {"container": ["ps", "-aq"], "network": ["network", "ls", "-q"]}
        args = listing.get(kind, [kind, "ls", "-q"])
        flags = [x for f in filters for x in ("--filter", f)]
        return self.docker(*args, *flags).split()

    def wipe(self) -> None:
        """Remove every container, network and volume the engine holds, and dangling images."""
        if containers := self.ids("container"):
            self.docker("rm", "-f", "-v", *containers, timeout_s=180)
        self.docker("network", "prune", "-f")
        self.docker("volume", "prune", "-f")
        self.docker("image", "prune", "-f")


@contextlib.contextmanager
def private_engine(cache_dir: Path | None = None, timeout_s: float = 90) -> Iterator[Engine]:
    """A private engine, torn down at the end whatever happens (containers, networks and
    volumes removed, engine stopped, namespace, veth and NAT rule deleted)."""
    sweep()
    tag = f"{random.randrange(16**6):06x}"
    run_dir = RUN_ROOT / f"{PREFIX}{tag}"
    run_dir.mkdir(mode=0o700)
    (run_dir / "owner").write_text(json.dumps(_me()))
    try:
        with _data_root(cache_dir or default_cache(), run_dir) as data_root:
            engine = _start(tag, run_dir, data_root, timeout_s)
            try:
                engine.wipe()
                yield engine
            finally:
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    engine.wipe()
                teardown(tag)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    engine.daemon.wait(timeout=10)
    finally:
        teardown(tag)


def sweep() -> None:
    """Tear down what killed runs left: run directories whose owner is gone, and
    namespaces with no run directory."""
    for run_dir in RUN_ROOT.glob(f"{PREFIX}*"):
        if not _owner_alive(run_dir):
            teardown(run_dir.name.removeprefix(PREFIX))
    for name in _namespaces():
        if not (RUN_ROOT / name).exists():
            teardown(name.removeprefix(PREFIX))


def teardown(tag: str) -> None:
    """Stop engine `tag` and delete all it made; safe to repeat, safe on a half-made one."""
    run_dir = RUN_ROOT / f"{PREFIX}{tag}"
    _stop_daemon(run_dir / "docker.pid")
    _kill_marked(tag)
    _unmount_under(run_dir)
    name = f"{PREFIX}{tag}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", f"adk{tag}h"], capture_output=True, check=False)
    _nat_rules(tag, delete=True)
    shutil.rmtree(run_dir, ignore_errors=True)


def _start(tag: str, run_dir: Path, data_root: Path, timeout_s: float) -> Engine:
    address = _make_namespace(tag)
    sock = run_dir / "docker.sock"
    env = {**os.environ, ENGINE_MARK: tag, "DOCKER_HOST": f"unix://{sock}"}
    env.pop("DOCKER_CONTEXT", None)
    argv = ["nsenter", f"--net={NETNS_DIR / (PREFIX + tag)}", "setsid", "dockerd"]
    argv += [f"--host=unix://{sock}", f"--data-root={data_root}"]
    argv += [f"--exec-root={run_dir / 'exec'}", f"--pidfile={run_dir / 'docker.pid'}"]
    argv += [f"--cgroup-parent={PREFIX}{tag}"]
    with (run_dir / "dockerd.log").open("wb") as log:
        daemon = subprocess.Popen(argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    engine = Engine(tag, run_dir, data_root, address, env, daemon)
    deadline = time.monotonic() + timeout_s
    while not engine.answers():
        if time.monotonic() > deadline:
            log_tail = (run_dir / "dockerd.log").read_text(errors="replace")[-2000:]
            raise EngineUnavailable(f"dockerd did not answer within {timeout_s} s:\n{log_tail}")
        time.sleep(0.5)
    return engine


def _make_namespace(tag: str) -> str:
    """The namespace, its veth pair and NAT: returns the namespace side's address."""
    name, host_if, ns_if = f"{PREFIX}{tag}", f"adk{tag}h", f"adk{tag}n"
    x, y = _free_slash30()
    host_ip, ns_ip = f"10.213.{x}.{y + 1}", f"10.213.{x}.{y + 2}"
    in_ns = ["ip", "netns", "exec", name]  # `ip` itself needs no cgroups
    for step in (
        ["ip", "netns", "add", name],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", name],
        ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        [*in_ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if],
        [*in_ns, "ip", "link", "set", ns_if, "up"],
        [*in_ns, "ip", "link", "set", "lo", "up"],
        [*in_ns, "ip", "route", "add", "default", "via", host_ip],
        # Left on afterwards: another engine on this machine may rely on it as well.
        ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
    ):
        _run(step)
    (RUN_ROOT / name / "subnet").write_text(f"10.213.{x}.{y}/30")
    _nat_rules(tag, delete=False)
    return ns_ip


def _free_slash30() -> tuple[int, int]:
    """(x, y) of a /30 `10.213.x.y` that no interface on the host uses yet (.y+1 the
    host's side, .y+2 the namespace's)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    while True:
        x, y = random.randrange(256), random.randrange(0, 256, 4)
        if f" 10.213.{x}.{y + 1}/" not in used:
            return x, y


def _nat_rules(tag: str, delete: bool) -> None:
    """Masquerade the engine's /30 (added, or every rule carrying its comment deleted)."""
    comment = f"{PREFIX}{tag}"
    if delete:
        rules = subprocess.run(
            ["iptables", "-t", "nat", "-S", "POSTROUTING"], capture_output=True, text=True
        )
        for line in rules.stdout.splitlines():
            if f"--comment {comment}" in line:
                argv = ["iptables", "-t", "nat", "-D", *line.split()[1:]]
                subprocess.run(argv, capture_output=True, check=False)
        return
    subnet = (RUN_ROOT / comment / "subnet").read_text()
    rule = ["-s", subnet, "-m", "comment", "--comment", comment, "-j", "MASQUERADE"]
    _run(["iptables", "-t", "nat", "-A", "POSTROUTING", *rule])


@contextlib.contextmanager
def _data_root(cache_dir: Path, run_dir: Path) -> Iterator[Path]:
    """The cached data root, held by a lock for this engine's life; a temporary one inside
    the run directory when another engine of this machine holds the cache."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / "data.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield run_dir / "data"
            return
        yield cache_dir / "data"


def _stop_daemon(pidfile: Path, timeout_s: float = 30) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    if procs.living(pid) is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while procs.living(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.2)


def _kill_marked(tag: str) -> None:
    """SIGKILL what is left of the engine: processes carrying its mark (dockerd,
    containerd, shims) and every process in its containers' cgroups."""
    mark = f"{ENGINE_MARK}={tag}".encode()
    pids = {p.pid for p in procs.everyone() if mark in procs.environ(p.pid)}
    for procs_file in Path("/sys/fs/cgroup").glob(f"*/{PREFIX}{tag}/**/cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(x) for x in procs_file.read_text().split())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(procs.living(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for group in Path("/sys/fs/cgroup").glob(f"*/{PREFIX}{tag}"):
        for sub in sorted(group.glob("**/"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()


def _unmount_under(run_dir: Path) -> None:
    mounts = Path("/proc/mounts").read_text().splitlines()
    points = [line.split()[1] for line in mounts if line.split()[1].startswith(f"{run_dir}/")]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _namespaces() -> list[str]:
    try:
        return [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(PREFIX)]
    except FileNotFoundError:
        return []


def _me() -> dict[str, int]:
    me = procs.stat(os.getpid())
    assert me is not None
    return {"pid": me.pid, "start_ticks": me.start_ticks}


def _owner_alive(run_dir: Path) -> bool:
    try:
        owner = json.loads((run_dir / "owner").read_text())
    except (OSError, ValueError):
        return False
    found = procs.living(int(owner["pid"]))
    return found is not None and found.start_ticks == owner["start_ticks"]


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineUnavailable(f"{' '.join(argv)}: {done.stderr.strip()}")
