"""A private network for fault tests: a bridge on the host and network namespaces, each
joined to it by a veth pair, as separate hosts at private addresses of the test's own.

The host reaches every namespace over the bridge; a test cuts a namespace off
(`isolate`), makes its link to the host lossy (`flaky`), or drops what one address sends it
(`drop_from`). Every name carries the pid of the process that made it, so that a later run
removes what a killed run left behind (`sweep`); `Fabric` removes what it made, processes
inside its namespaces included, however the block ends.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from devtools import procs

# `ap<owner pid in hex>x<2 hex>`: short enough for interface names (15 characters).
_OWNED: Final = re.compile(r"^ap([0-9a-f]+)x[0-9a-f]{2}")
# Where a fabric's subnet is chosen: a /24 that no route or address of the host overlaps.
_POOL: Final = ipaddress.IPv4Network("10.160.0.0/11")


def ip(*args: str, netns: str = "") -> str:
    """Run `ip ARGS` (inside `netns` if given) and return its output; fail loudly."""
    return _run(["ip", *(["-n", netns] if netns else []), *args])


def _run(cmd: Sequence[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def in_netns(netns: str, *cmd: str) -> str:
    return _run(["ip", "netns", "exec", netns, *cmd])


@dataclass(frozen=True)
class Host:
    """One namespace: its name, the host side of its veth pair, and its address."""

    netns: str
    veth: str
    address: str


class Fabric:
    """`size` namespaces on one bridge; `with Fabric(3) as fabric` makes and removes them."""

    def __init__(self, size: int) -> None:
        self.name = f"ap{os.getpid():x}x{secrets.token_hex(1)}"
        self.subnet = free_subnet()
        addresses = [str(a) for a in self.subnet.hosts()]
        self.gateway_address = addresses[0]  # the host's own, on the bridge
        self.hosts = [
            Host(f"{self.name}n{i}", f"{self.name}v{i}", addresses[10 + i]) for i in range(size)
        ]

    @property
    def bridge(self) -> str:
        return f"{self.name}b"

    def __enter__(self) -> Fabric:
        sweep()
        try:
            self._make()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def _make(self) -> None:
        prefix = self.subnet.prefixlen
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway_address}/{prefix}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for host in self.hosts:
            ip("netns", "add", host.netns)
            ip(
                "link",
                "add",
                host.veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host.netns,
            )
            ip("link", "set", host.veth, "master", self.bridge, "up")
            ip("addr", "add", f"{host.address}/{prefix}", "dev", "eth0", netns=host.netns)
            ip("link", "set", "eth0", "up", netns=host.netns)
            ip("link", "set", "lo", "up", netns=host.netns)

    def remove(self) -> None:
        """Kill every process in the namespaces, then remove them and the bridge."""
        remove(self.name)

    def isolate(self, host: Host) -> None:
        """Cut `host` off from every other: a clean partition, nothing answers either way."""
        ip("link", "set", host.veth, "down")

    def heal(self, host: Host) -> None:
        ip("link", "set", host.veth, "up")

    def flaky(self, host: Host, loss: float) -> None:
        """Drop a random share `loss` of the packets between the host and `host`, both
        ways, and only those: the cluster's own traffic to `host` stays clean. (iptables'
        random match: this kernel has no netem.)"""
        for rule in _flaky_rules(self.gateway_address, loss):
            in_netns(host.netns, "iptables", "-A", *rule)

    def steady(self, host: Host, loss: float) -> None:
        for rule in _flaky_rules(self.gateway_address, loss):
            in_netns(host.netns, "iptables", "-D", *rule)

    def drop_from(self, host: Host, source: str) -> None:
        """`host` drops every packet from `source`; what it sends still goes out (one way)."""
        in_netns(host.netns, "iptables", "-I", "INPUT", "-s", source, "-j", "DROP")

    def undrop_from(self, host: Host, source: str) -> None:
        in_netns(host.netns, "iptables", "-D", "INPUT", "-s", source, "-j", "DROP")


def _flaky_rules(address: str, loss: float) -> list[list[str]]:
    random = ["-m", "statistic", "--mode", "random", "--probability", str(loss), "-j", "DROP"]
    return [["INPUT", "-s", address, *random], ["OUTPUT", "-d", address, *random]]


def free_subnet() -> ipaddress.IPv4Network:
    """A random /24 of the pool that overlaps no route and no address of the host."""
    taken = [ipaddress.ip_network(r["dst"]) for r in _json("route") if "/" in r["dst"]]
    taken += [
        ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
        for link in _json("addr")
        for a in link.get("addr_info", [])
        if a.get("family") == "inet"
    ]
    subnets = list(_POOL.subnets(new_prefix=24))
    for _ in range(100):
        subnet = secrets.choice(subnets)
        if not any(subnet.overlaps(t) for t in taken if t.version == 4):
            return subnet
    raise RuntimeError(f"no free /24 in {_POOL}")


def _json(*args: str) -> list[dict[str, Any]]:
    return list(json.loads(_run(["ip", "-j", *args]) or "[]"))


def sweep() -> None:
    """Remove the namespaces and links of fabrics whose owner process is gone."""
    names = {m.group(0) for m in map(_OWNED.match, _names()) if m}
    for name in names:
        match = _OWNED.match(name)
        if match and procs.living(int(match.group(1), 16)) is None:
            remove(name)


def _names() -> list[str]:
    links = [str(link["ifname"]) for link in _json("link")]
    return links + ip("netns", "list").split()


def remove(name: str) -> None:
    """Everything of fabric `name`: processes in its namespaces, namespaces, bridge."""
    for netns in [n for n in ip("netns", "list").split() if n.startswith(name)]:
        _kill_inside(netns)
        ip("netns", "del", netns)
    # Removing a namespace removes its veth ends, and so their peers on the host.
    for link in [n for n in _names() if n.startswith(name)]:
        with contextlib.suppress(RuntimeError):  # a veth that went with its namespace
            ip("link", "del", link)


def _kill_inside(netns: str, timeout_s: float = 10.0) -> None:
    """SIGKILL every process in `netns` (nodes, epmd, helpers), and wait until none is left."""
    deadline = time.monotonic() + timeout_s
    while pids := [int(p) for p in ip("netns", "pids", netns).split()]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} in {netns} outlived SIGKILL")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
