"""The servers under test, each started in a process of its own and stopped by the bench."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp

from bench import LOOPBACK, ROOT
from devtools.rabbitnode import free_port
from devtools.stack import BIN, GATEWAY_COMMAND
from tests.support.processes import child_environ

START_TIMEOUT_S: Final = 30.0
# Above the gateway's default http.shutdown_timeout_s, so a SIGTERM drain is never cut short.
STOP_TIMEOUT_S: Final = 15.0
LOG_TAIL_CHARS: Final = 3000


class ServerFailed(Exception):
    """A server did not come up, or died under load; the message ends with its log."""


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server: `{port}` and `{amqp_url}` in `argv` are filled at start."""

    name: str
    label: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # settings of this mode, over the bench's own
    publishes: bool = True
    gateway: bool = False


PYTHON: Final = (sys.executable, "-m")
GATEWAY_ARGV: Final = (str(BIN / GATEWAY_COMMAND[0]), *GATEWAY_COMMAND[1:])
SPECS: Final[tuple[ServerSpec, ...]] = (
    ServerSpec(
        "bare",
        "bare aiohttp (bound)",
        (*PYTHON, "bench.bare", "--port", "{port}"),
        publishes=False,
    ),
    ServerSpec(
        "naive",
        "naive baseline",
        (*PYTHON, "bench.naive", "--port", "{port}", "--amqp-url", "{amqp_url}"),
    ),
    ServerSpec(
        "gateway",
        "gateway (fsync always)",
        GATEWAY_ARGV,
        (("AIFI_SPOOL_FSYNC", "always"),),
        gateway=True,
    ),
    ServerSpec(
        "gateway-fsync-never",
        "gateway (fsync never)",
        GATEWAY_ARGV,
        (("AIFI_SPOOL_FSYNC", "never"),),
        gateway=True,
    ),
    ServerSpec(
        "gateway-ack-confirmed",
        "gateway (ack confirmed)",
        GATEWAY_ARGV,
        (("AIFI_SPOOL_FSYNC", "always"), ("AIFI_GATEWAY_ACK", "confirmed")),
        gateway=True,
    ),
    ServerSpec(
        "gateway-processes-2",
        "gateway (http.processes 2)",
        GATEWAY_ARGV,
        (("AIFI_SPOOL_FSYNC", "always"), ("AIFI_HTTP_PROCESSES", "2")),
        gateway=True,
    ),
)
NAMES: Final = tuple(spec.name for spec in SPECS)


def server_env(
    spec: ServerSpec, port: int, amqp_url: str, token: str, workdir: Path
) -> dict[str, str]:
    # The bench must not inherit someone's spool or tokens.
    env = child_environ()
    if spec.gateway:
        env |= {
            "AIFI_AMQP_URL": amqp_url,
            "AIFI_HTTP_HOST": LOOPBACK,
            "AIFI_HTTP_PORT": str(port),
            "AIFI_TOKENS": f"bench={token}",
            "AIFI_SPOOL_DIR": str(workdir / "spool"),
        }
    return env | dict(spec.env)


@dataclass
class Running:
    """A started server: its process, where it listens and where it logs."""

    spec: ServerSpec
    process: asyncio.subprocess.Process
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            raise ServerFailed(
                f"{self.spec.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )


async def wait_healthy(server: Running, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while asyncio.get_running_loop().time() < deadline:
            server.check_alive()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{server.url}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise ServerFailed(f"{server.spec.name} did not answer /healthz:\n{server.log_tail()}")


async def stop(server: Running) -> None:
    """SIGTERM, as an operator would; SIGKILL only if it does not exit in time."""
    if server.process.returncode is not None:
        return
    server.process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(server.process.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        server.process.kill()
        await server.process.wait()


@contextlib.asynccontextmanager
async def started(
    spec: ServerSpec, amqp_url: str, token: str, workdir: Path
) -> AsyncIterator[Running]:
    """The server, listening and healthy, for the duration of the block."""
    port = free_port()
    argv = [arg.format(port=port, amqp_url=amqp_url) for arg in spec.argv]
    log_path = workdir / f"{spec.name}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env=server_env(spec, port, amqp_url, token, workdir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    server = Running(spec, process, f"http://{LOOPBACK}:{port}", log_path)
    try:
        await wait_healthy(server, START_TIMEOUT_S)
        yield server
    finally:
        await stop(server)
