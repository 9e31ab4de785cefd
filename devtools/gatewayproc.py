"""A gateway in a subprocess, for fault tests and benchmarks: start, SIGKILL, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
# The commands the tests run as processes; docker-compose.yml must use these (a test checks).
GATEWAY_COMMAND = ("aifi-gateway",)
CONSUMER_COMMAND = ("aifi-consumer",)


def child_environ() -> dict[str, str]:
    """This process's environment for a child, less the caller's own AIFI_* settings
    (a shell's tokens, say): a child gets exactly the settings it is given."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AIFI_")}


class GatewayProcess:
    """One `aifi-gateway` process on a loopback port, with its settings in `env`."""

    def __init__(self, port: int, env: dict[str, str], log_path: Path) -> None:
        self.port, self.env, self.log_path = port, env, log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        here = {"AIFI_HTTP_HOST": "127.0.0.1", "AIFI_HTTP_PORT": str(self.port)}
        env = child_environ() | self.env | here
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / GATEWAY_COMMAND[0]), *GATEWAY_COMMAND[1:]],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_alive(timeout_s)

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
        """SIGKILL: a crash, with no chance to flush or drain anything."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
