"""Consumers for a test: queues no other test uses, a worker consuming for a block, and
worker processes (`aifi-consumer NAME`)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import yaml

from consumers import topology
from consumers.runner import Worker
from core.settings import ConsumerSettings
from devtools.stack import BIN, CONSUMER_COMMAND
from tests.support.ledger_schema import sqlite_processed
from tests.support.processes import child_environ
from tests.support.waiting import eventually


@contextlib.asynccontextmanager
async def running(worker: Worker, timeout_s: float = 10.0) -> AsyncIterator[asyncio.Task[None]]:
    """`worker` consuming in the background for the block, then stopped gracefully."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    def consuming() -> bool:
        if task.done():
            task.result()
        return worker.state.consuming

    try:
        await eventually(consuming, timeout_s, f"{worker.name} to consume")
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout_s)


class Scratch:
    """Consumers with names no one else uses, made for one test from `base` settings;
    `delete` removes their queues."""

    def __init__(self, url: str, base: ConsumerSettings) -> None:
        self.url = url
        self._base = base
        self._made: list[tuple[str, ConsumerSettings]] = []

    def consumer(self, *bindings: str, **overrides: Any) -> tuple[str, ConsumerSettings]:
        name = f"t{uuid.uuid4().hex[:16]}"
        settings = ConsumerSettings.model_validate(
            self._base.model_dump() | overrides | {"bindings": bindings}
        )
        self._made.append((name, settings))
        return name, settings

    async def delete(self) -> None:
        connection = await aio_pika.connect(self.url)
        async with connection, connection.channel() as channel:
            for name, settings in self._made:
                await topology.delete(channel, name, settings)

    async def delete_named(self, name: str) -> None:
        """The queues of a consumer `name` made elsewhere (a worker process's) from `base`."""
        self._made.append((name, self._base))
        await self.delete()


ROOT = Path(__file__).resolve().parents[2]
Launcher = Callable[[dict[str, ConsumerSettings]], "WorkerProcess"]


class WorkerProcess:
    """One `aifi-consumer NAME`, its settings in a YAML file, its log in a file."""

    def __init__(self, tmp_path: Path, amqp_url: str, consumers: dict[str, ConsumerSettings]):
        tmp_path.mkdir(parents=True)
        self.db = tmp_path / "ledger.sqlite3"
        self.config = tmp_path / "config.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "consumers": {n: s.model_dump(mode="json") for n, s in consumers.items()},
                }
            )
        )
        self.env = child_environ() | {
            "AIFI_AMQP_URL": amqp_url,
            "AIFI_CONFIG": str(self.config),
            "AIFI_LEDGER_DB": str(self.db),
        }
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.runs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{len(self.runs)}.log").open("wb") as log:
            process = subprocess.Popen(
                [str(BIN / CONSUMER_COMMAND[0]), *CONSUMER_COMMAND[1:], *args],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self.runs.append(process)
        return process

    def messages(self, run: int) -> list[str]:
        return [line["message"] for line in self.log_lines(run)]

    def log_lines(self, run: int) -> list[dict[str, Any]]:
        text = (self.logs / f"{run}.log").read_text()
        return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]

    def stopped(self, run: int) -> dict[str, Any]:
        [line] = [line for line in self.log_lines(run) if line["message"] == "stopped"]
        return line

    def processed(self) -> int:
        return sqlite_processed(self.db)

    def processed_ids(self) -> set[str]:
        """The event ids the ledger marked processed."""
        self.processed()  # creates the schema if the worker has not yet
        return {row[0] for row in self.query("SELECT event_id FROM processed")}

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.db)) as db:
            return db.execute(sql).fetchall()

    def kill_all(self) -> None:
        for process in self.runs:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            if process.stdout is not None:
                process.stdout.close()
