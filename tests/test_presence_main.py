"""`aifi-presence` as a process: it refuses to serve without a token of its own, serves
with one, never logs it, and stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools.rabbitnode import free_port
from tests.support.gateway import CONFIG
from tests.support.processes import child_environ

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "presence-main-token-51ab"
START_TIMEOUT_S = 30.0


def command() -> list[str]:
    return [sys.executable, "-m", "presence"]


def environ(tmp_path: Path, **settings: str) -> dict[str, str]:
    return child_environ() | {
        "AIFI_CONFIG": str(CONFIG),
        "AIFI_LEDGER_DB": str(tmp_path / "ledger.sqlite3"),
    } | settings  # fmt: skip


def test_without_a_token_it_exits_2_naming_the_setting(tmp_path: Path) -> None:
    done = subprocess.run(
        command(), cwd=ROOT, env=environ(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "AIFI_PRESENCE_TOKENS" in done.stderr


def test_a_gateway_token_is_not_one_of_its_own(tmp_path: Path) -> None:
    env = environ(tmp_path, AIFI_TOKENS=f"aifi={TOKEN}")
    done = subprocess.run(command(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2


def test_a_bad_gateway_http_value_does_not_concern_it(tmp_path: Path) -> None:
    env = environ(tmp_path, AIFI_HTTP_PORT="eighty", AIFI_HTTP_MAX_BODY_BYTES=str(2**30))
    done = subprocess.run(
        [*command(), "openapi"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("{")


def answer(url: str, token: str | None = None) -> int | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def test_it_serves_on_its_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = environ(
        tmp_path, AIFI_PRESENCE_TOKENS=f"downstream={TOKEN}", AIFI_PRESENCE_PORT=str(port)
    )
    log = tmp_path / "presence.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command(), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while answer(f"{base}/healthz") != 200:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        # No worker has created the ledger: not ready, and not created by a reader either.
        assert answer(f"{base}/readyz") == 503
        assert answer(f"{base}/stores", TOKEN) == 503
        assert answer(f"{base}/stores") == 401
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not (tmp_path / "ledger.sqlite3").exists()
    assert "downstream" in log.read_text()
    assert TOKEN not in log.read_text()
