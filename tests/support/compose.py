"""docker-compose.yml run as users run it, on a private engine: docker-compose 1.29 (the
Python one Debian ships), a project name of the test's own, fresh secrets per run.

The file is used as it is, but for what the runner or a stand-in image does not understand;
`translate` makes that copy and says what it changed."""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.dockerengine import Engine
from tests.support.processes import child_environ

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_CONF = "deploy/rabbitmq-cluster.conf"
# Keys RabbitMQ 3.10 (Debian's, in the stand-in image) refuses to boot with; the 4.x image
# takes them. Without them the three nodes still form one cluster and the workers' queues
# are still quorum queues (they declare their type themselves).
NEWER_RABBITMQ_KEYS = (
    "quorum_queue.initial_cluster_size",
    "queue_leader_locator",
    "default_queue_type",
)


def translate(work_dir: Path, rabbitmq_standin: bool) -> tuple[Path, list[str]]:
    """A copy of docker-compose.yml for docker-compose 1.29 (and the stand-ins), and the list
    of what it changed. Paths in it stay relative to the clone (`--project-directory`)."""
    text = (ROOT / "docker-compose.yml").read_text()
    changes = ["top-level `name:` dropped (docker-compose 1.29 does not know it): `-p <project>`"]
    text, dropped = re.subn(r"(?m)^name: .*\n", "", text)
    assert dropped == 1, "docker-compose.yml has no top-level name: any more; update translate()"
    if rabbitmq_standin:
        conf = work_dir / "rabbitmq-cluster.conf"
        kept, removed = _without_newer_keys((ROOT / CLUSTER_CONF).read_text())
        conf.write_text(kept)
        text = text.replace(f"./{CLUSTER_CONF}:", f"{conf}:")
        changes.append(
            f"{CLUSTER_CONF}: {', '.join(removed)} left out (RabbitMQ 3.10 stand-in refuses them)"
        )
    path = work_dir / "docker-compose.yml"
    path.write_text(text)
    return path, changes


def _without_newer_keys(conf: str) -> tuple[str, list[str]]:
    kept, removed = [], []
    for line in conf.splitlines(keepends=True):
        key = line.split("=", 1)[0].strip()
        if key in NEWER_RABBITMQ_KEYS:
            removed.append(key)
        else:
            kept.append(line)
    return "".join(kept), removed


@dataclass(frozen=True)
class Secrets:
    """Fresh secrets per run, given to compose through its environment, as users give them."""

    gateway_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    presence_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    rabbitmq_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    postgres_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    erlang_cookie: str = field(default_factory=lambda: secrets.token_hex(20))

    def env(self) -> dict[str, str]:
        return {
            "AIFI_TOKENS": f"aifi={self.gateway_token}",
            "AIFI_PRESENCE_TOKENS": f"reader={self.presence_token}",
            "RABBITMQ_PASSWORD": self.rabbitmq_password,
            "POSTGRES_PASSWORD": self.postgres_password,
            "RABBITMQ_ERLANG_COOKIE": self.erlang_cookie,
        }

    def values(self) -> list[str]:
        return [
            self.gateway_token,
            self.presence_token,
            self.rabbitmq_password,
            self.postgres_password,
            self.erlang_cookie,
        ]


@dataclass
class Stack:
    """One compose project on the engine."""

    engine: Engine
    file: Path
    project: str
    keys: Secrets
    profiles: tuple[str, ...] = ()

    def compose(self, *args: str, timeout_s: float = 300) -> str:
        env = {**child_environ(), **self.engine.env, **self.keys.env()}
        argv = ["docker-compose", "-p", self.project, "-f", str(self.file)]
        argv += ["--project-directory", str(ROOT), "--no-ansi"]
        argv += [x for p in self.profiles for x in ("--profile", p)]
        done = subprocess.run(
            [*argv, *args], env=env, capture_output=True, text=True, timeout=timeout_s
        )
        if done.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def label(self) -> str:
        return f"label=com.docker.compose.project={self.project}"

    def containers(self) -> dict[str, str]:
        """Every container of the project, running or not: name -> `State Status`."""
        out = self.engine.docker(
            "ps", "-a", "--filter", self.label(), "--format", "{{.Names}}\t{{.State}} {{.Status}}"
        )
        return dict(line.split("\t", 1) for line in out.splitlines() if line)

    def container(self, service: str, index: int = 1) -> str:
        return f"{self.project}_{service}_{index}"

    def wait_settled(self, services: list[str], timeout_s: float) -> float:
        """Seconds until every container of `services` is healthy (or, for a one-shot,
        exited 0); fails naming the laggards and their logs after `timeout_s`."""
        start = time.monotonic()
        while True:
            states = self.containers()
            mine = {n: s for n, s in states.items() if _service_of(n, self.project) in services}
            waiting = {n: s for n, s in mine.items() if not _settled(s)}
            if mine and not waiting and _all_present(mine, services, self.project):
                return time.monotonic() - start
            if time.monotonic() - start > timeout_s:
                raise AssertionError(
                    f"not healthy after {timeout_s} s: {waiting or services}\n"
                    + self.logs(*(_service_of(n, self.project) for n in waiting))
                )
            time.sleep(1)

    def logs(self, *services: str) -> str:
        try:
            return self.compose("logs", "--no-color", "--tail", "30", *services, timeout_s=60)[
                -6000:
            ]
        except (AssertionError, subprocess.SubprocessError) as exc:
            return f"(no logs: {exc})"


def _service_of(container: str, project: str) -> str:
    return container.removeprefix(f"{project}_").rsplit("_", 1)[0]


def _all_present(states: dict[str, str], services: list[str], project: str) -> bool:
    return {_service_of(n, project) for n in states} >= set(services)


def _settled(state: str) -> bool:
    return "(healthy)" in state or state.startswith("exited Exited (0)")
