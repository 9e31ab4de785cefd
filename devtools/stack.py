"""`make run`: the gateway and the consumer workers in the foreground; Ctrl-C stops them all.

The development token is generated once into `data/dev-token` (never printed);
the curl shown reads it from there.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from consumers.__main__ import BUILT_IN
from core.settings import Settings, load
from devtools.gatewayproc import CONSUMER_COMMAND, GATEWAY_COMMAND

BIN = Path(sys.executable).parent
TOKEN_FILE = Path("data/dev-token")
READY_TIMEOUT_S = 30.0


def dev_token() -> str:
    if not TOKEN_FILE.exists():
        TOKEN_FILE.parent.mkdir(parents=True, exist_ok=True)
        TOKEN_FILE.write_text(secrets.token_urlsafe(24))
        TOKEN_FILE.chmod(0o600)
    return TOKEN_FILE.read_text().strip()


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("AIFI_TOKENS", f"dev={dev_token()}")
    return env


def commands() -> list[list[str]]:
    """Consumers first, gateway last, so stopping in reverse stops the gateway first."""
    workers = [[str(BIN / CONSUMER_COMMAND[0]), *CONSUMER_COMMAND[1:], name] for name in BUILT_IN]
    return [*workers, [str(BIN / GATEWAY_COMMAND[0]), *GATEWAY_COMMAND[1:]]]


def wait_ready(settings: Settings) -> bool:
    url = f"http://{settings.http.host}:{settings.http.port}/readyz"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    return False


def banner(settings: Settings) -> str:
    base = f"http://{settings.http.host}:{settings.http.port}{settings.http.base_path}"
    return (
        "\nThe stack is up. Post AiFi's example 'entered' webhook with the development token:\n\n"
        f"  curl -sS -X POST {base}/entered \\\n"
        f'    -H "Authorization: Bearer $(cat {TOKEN_FILE})" \\\n'
        "    -H 'Content-Type: application/json' --data-binary @examples/entered.json\n\n"
        "See events as they reach RabbitMQ with `make tail` (another terminal),\n"
        "the spool with `make spool`, and the presence ledger with\n"
        "`.venv/bin/aifi-ledger occupancy`. Ctrl-C stops everything.\n"
    )


def stop(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each child, gateway first, and wait for it; a second Ctrl-C cannot cut this
    short, since the children already got the terminal's SIGINT and are stopping."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()


def supervise(children: list[subprocess.Popen[bytes]]) -> int:
    """Wait until Ctrl-C/SIGTERM (0) or until a child dies on its own (1)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    print("stack: a process exited on its own; stopping the rest", file=sys.stderr)
    return 1


def main() -> int:
    settings = load()
    env = child_env()
    children = [subprocess.Popen(cmd, env=env) for cmd in commands()]
    try:
        if wait_ready(settings):
            print(banner(settings), flush=True)
        return supervise(children)
    finally:
        stop(children)


if __name__ == "__main__":
    raise SystemExit(main())
