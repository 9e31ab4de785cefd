"""The official images' documented contract, checked on whatever image a Docker engine
holds under their names (the registry's, or a stand-in from devtools/standins.py). Each
check starts its containers with unique names and removes them, and their volumes, after.

    check_rabbitmq(env, "rabbitmq:4.2.9-management")
    check_postgres(env, "postgres:17.6")

`env` is the environment naming the engine (DOCKER_HOST); a failed check raises
AssertionError saying what the image did instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Mapping

READY_TIMEOUT_S = 120.0


def docker(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT_S,
        check=False,
    )


@contextlib.contextmanager
def container(env: Mapping[str, str], *run_args: str) -> Iterator[str]:
    """A detached container, removed with its anonymous volumes however the block ends."""
    name = f"standin-check-{secrets.token_hex(4)}"
    started = docker(env, "run", "--detach", "--name", name, *run_args)
    try:
        assert started.returncode == 0, started.stderr
        yield name
    finally:
        docker(env, "rm", "--force", "--volumes", name)


def wait_until(env: Mapping[str, str], name: str, *probe: str) -> None:
    """Until `docker exec NAME PROBE` succeeds; fails with the container's log tail."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while docker(env, "exec", name, *probe).returncode != 0:
        if time.monotonic() > deadline:
            logs = docker(env, "logs", "--tail", "30", name)
            raise AssertionError(f"{name}: {' '.join(probe)} never succeeded\n{logs.stderr}")
        time.sleep(1.0)


def check_rabbitmq(env: Mapping[str, str], image: str) -> None:
    """RABBITMQ_DEFAULT_USER/_PASS, RABBITMQ_ERLANG_COOKIE, rabbitmq-diagnostics, the
    management plugin, data in /var/lib/rabbitmq."""
    password, cookie = secrets.token_hex(8), secrets.token_hex(16)
    environment = ["-e", "RABBITMQ_DEFAULT_USER=checker", "-e", f"RABBITMQ_DEFAULT_PASS={password}"]
    with container(env, *environment, "-e", f"RABBITMQ_ERLANG_COOKIE={cookie}", image) as name:
        wait_until(env, name, "rabbitmq-diagnostics", "-q", "check_port_connectivity")
        authenticated = docker(
            env, "exec", name, "rabbitmqctl", "authenticate_user", "checker", password
        )
        assert authenticated.returncode == 0, authenticated.stdout + authenticated.stderr
        plugins = docker(env, "exec", name, "rabbitmq-plugins", "list", "--enabled", "--minimal")
        assert "rabbitmq_management" in plugins.stdout.split(), plugins.stdout
        kept = docker(env, "exec", name, "cat", "/var/lib/rabbitmq/.erlang.cookie")
        assert kept.stdout.strip() == cookie, "the cookie is not the one given"
        mnesia = docker(env, "exec", name, "ls", "/var/lib/rabbitmq/mnesia")
        assert mnesia.returncode == 0, mnesia.stderr


def check_postgres(env: Mapping[str, str], image: str) -> None:
    """Refuses to initialise without a password; POSTGRES_USER/_PASSWORD/_DB; data in
    /var/lib/postgresql/data; pg_isready."""
    refused = docker(env, "run", "--rm", image)
    assert refused.returncode != 0, "initialised without a password"
    assert "superuser password is not specified" in refused.stderr, refused.stderr
    environment = ["-e", "POSTGRES_USER=checker", "-e", "POSTGRES_DB=checks"]
    with container(
        env, *environment, "-e", f"POSTGRES_PASSWORD={secrets.token_hex(8)}", image
    ) as name:
        # As with the official image, the socket answers during initialisation too, from
        # a server that is stopped afterwards: wait for the server that stays.
        query = ["psql", "-U", "checker", "-d", "checks", "-Atc", "SHOW data_directory"]
        wait_until(env, name, *query)
        ready = docker(env, "exec", name, "pg_isready", "-U", "checker", "-d", "checks")
        assert ready.returncode == 0, ready.stdout
        shown = docker(env, "exec", name, *query)
        assert shown.stdout.strip() == "/var/lib/postgresql/data", shown.stdout + shown.stderr
