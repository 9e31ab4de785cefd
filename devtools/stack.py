"""`make run`: RabbitMQ if none answers, then the gateway, the consumer workers and the
presence API in the foreground. Ctrl-C, SIGTERM and SIGHUP (a closed terminal) each stop
everything it started, the private broker included.

One stack per checkout: `data/stack.lock` is held (flock) while one runs, and a second
refuses at once, saying what runs on which ports, without touching the first. The
development tokens are generated once into `data/dev-token` (the gateway's) and
`data/dev-presence-token` (the presence API's), never printed; the curls shown read them
from there.

    python -m devtools.stack [--rabbit-dir .rabbitmq] [--node-name aifi-dev]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from core.settings import BUILT_IN_CONSUMERS, Settings, load
from devtools.rabbitnode import (
    DEFAULT_NAME,
    broker_for,
    ignore_stop_signals,
    stop_signals_interrupt,
)

BIN = Path(sys.executable).parent
# The programs the stack runs (entry points of pyproject.toml); the tests run them as
# processes too, and docker-compose.yml must run these (tests/test_compose.py checks).
GATEWAY_COMMAND = ("aifi-gateway",)
CONSUMER_COMMAND = ("aifi-consumer",)
PRESENCE_COMMAND = ("aifi-presence",)
DATA_DIR = Path("data")
TOKEN_FILE = DATA_DIR / "dev-token"
PRESENCE_TOKEN_FILE = DATA_DIR / "dev-presence-token"
LOCK_FILE = DATA_DIR / "stack.lock"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
# Moving what queues hold takes a while on a big backlog; a stuck broker must not hang us.
MIGRATE_TIMEOUT_S = 300.0


def say(text: str) -> None:
    """Print to stderr; after SIGHUP the terminal is gone, and cleanup must go on anyway."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr, flush=True)


def dev_token(path: Path = TOKEN_FILE) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created readable by its owner only, never world-readable for an instant.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as token_file:
            token_file.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("AIFI_TOKENS", f"dev={dev_token()}")
    env.setdefault("AIFI_PRESENCE_TOKENS", f"dev={dev_token(PRESENCE_TOKEN_FILE)}")
    return env


def program(command: tuple[str, ...], *args: str) -> list[str]:
    return [str(BIN / command[0]), *command[1:], *args]


def commands() -> list[list[str]]:
    """Consumers first, the presence API, gateway last, so that stopping in reverse stops
    the gateway first."""
    workers = [program(CONSUMER_COMMAND, name) for name in BUILT_IN_CONSUMERS]
    return [*workers, program(PRESENCE_COMMAND), program(GATEWAY_COMMAND)]


def migrated(env: dict[str, str]) -> bool:
    """Bring queues an earlier checkout declared with other arguments up to date, while no
    worker consumes them: on a broker kept in `.rabbitmq/` from before, the workers and
    the gateway would otherwise refuse to declare them and loop."""
    try:
        done = subprocess.run(
            program(CONSUMER_COMMAND, "migrate"),
            env=env,
            capture_output=True,
            text=True,
            timeout=MIGRATE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        say(f"stack: aifi-consumer migrate did not finish within {MIGRATE_TIMEOUT_S:g} s")
        return False
    if done.returncode != 0:
        say(f"stack: aifi-consumer migrate failed:\n{done.stderr.strip()}")
        return False
    moved = json.loads(done.stdout)["migrated"]
    if moved:
        say(f"stack: queues migrated to this release's arguments (messages moved): {moved}")
    return True


def listen_ports(settings: Settings) -> dict[str, tuple[str, int]]:
    """What the stack will listen on: the gateway, each worker's health endpoint and the
    presence API."""
    wanted = {"gateway": (settings.http.host, settings.http.port)}
    for name in BUILT_IN_CONSUMERS:
        consumer = settings.consumer(name)
        if consumer.health_port:
            wanted[f"{name} worker health"] = (consumer.health_host, consumer.health_port)
    wanted["presence API"] = (settings.presence.host, settings.presence.port)
    return wanted


def bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves bind: connections in TIME_WAIT do not make a port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def busy_ports(wanted: dict[str, tuple[str, int]]) -> list[str]:
    return [
        f"{what} {host}:{port}" for what, (host, port) in wanted.items() if not bindable(host, port)
    ]


def broker_url(settings: Settings) -> str:
    return settings.amqp.urls[0]


def describe(settings: Settings) -> str:
    """One line for the lock file: what this stack runs where (no credentials)."""
    places = ", ".join(
        f"{what} {host}:{port}" for what, (host, port) in listen_ports(settings).items()
    )
    broker = urlsplit(broker_url(settings))
    return f"pid {os.getpid()}: {places}; broker {broker.hostname}:{broker.port or 5672}"


def acquire(path: Path) -> IO[str] | None:
    """path opened and exclusively locked, or None if another process holds the lock.
    The lock goes with the process, however it ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def record(handle: IO[str], text: str) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(text + "\n")
    handle.flush()


def wait_ready(settings: Settings, children: list[subprocess.Popen[bytes]]) -> bool:
    url = f"http://{settings.http.host}:{settings.http.port}/readyz"
    deadline = time.monotonic() + READY_TIMEOUT_S
    # A child that died cannot become ready; whatever else answers on the port is not ours.
    while time.monotonic() < deadline and all(child.poll() is None for child in children):
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    return False


def banner(settings: Settings) -> str:
    base = f"http://{settings.http.host}:{settings.http.port}{settings.http.base_path}"
    presence = f"http://{settings.presence.host}:{settings.presence.port}"
    return (
        "\nThe stack is up. Post AiFi's example 'entered' webhook with the development token:\n\n"
        f"  curl -sS -X POST {base}/entered \\\n"
        f'    -H "Authorization: Bearer $(cat {TOKEN_FILE})" \\\n'
        "    -H 'Content-Type: application/json' --data-binary @examples/entered.json\n\n"
        "Then ask the presence API who is in which store:\n\n"
        f'  curl -sS {presence}/stores -H "Authorization: Bearer $(cat {PRESENCE_TOKEN_FILE})"\n\n'
        "See events as they reach RabbitMQ with `make tail` (another terminal),\n"
        "the spool with `make spool`, and the presence ledger with\n"
        "`.venv/bin/aifi-ledger occupancy`. Ctrl-C stops everything.\n"
    )


def stop(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each child, gateway first, and wait for it (SIGKILL after STOP_TIMEOUT_S)."""
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def supervise(children: list[subprocess.Popen[bytes]]) -> int:
    """Wait until Ctrl-C, SIGTERM or SIGHUP (0) or until a child dies on its own (1)."""
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    say("stack: a process exited on its own; stopping the rest")
    return 1


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The broker (if none answers), then the children; all stopped again in reverse."""
    with broker_for(broker_url(settings), args.rabbit_dir, args.node_name):
        env = child_env()
        children: list[subprocess.Popen[bytes]] = []
        try:
            if not migrated(env):
                return 1
            children.extend(subprocess.Popen(cmd, env=env) for cmd in commands())
            if wait_ready(settings, children):
                with contextlib.suppress(OSError):
                    print(banner(settings), flush=True)
            return supervise(children)
        finally:
            # The broker is stopped after this, with these signals still ignored.
            ignore_stop_signals()
            stop(children)


def start(settings: Settings, args: argparse.Namespace, lock: IO[str]) -> int:
    busy = busy_ports(listen_ports(settings))
    if busy:
        say(
            f"stack: in use by another process: {', '.join(busy)}; stop it, or choose other "
            "ports (AIFI_HTTP_PORT, AIFI_CONSUMERS_<NAME>_HEALTH_PORT, AIFI_PRESENCE_PORT)"
        )
        return 1
    record(lock, describe(settings))
    try:
        with stop_signals_interrupt():
            return run(settings, args)
    except KeyboardInterrupt:
        # Interrupted while the broker was starting; it cleaned up after itself.
        return 0
    except RuntimeError as exc:
        say(f"stack: RabbitMQ: {exc}")
        return 1


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.stack", description=__doc__)
    parser.add_argument("--rabbit-dir", type=Path, default=Path(".rabbitmq"))
    parser.add_argument("--node-name", default=DEFAULT_NAME)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    settings = load()
    lock = acquire(LOCK_FILE)
    if lock is None:
        say(
            f"stack: already running in this checkout ({LOCK_FILE.read_text().strip()}); "
            "stop it first (Ctrl-C in its terminal)"
        )
        return 1
    with lock:
        return start(settings, args, lock)


if __name__ == "__main__":
    raise SystemExit(main())
