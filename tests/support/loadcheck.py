"""A bounded loopback load and a total-queue checker in the style of Jepsen's.

Every request carries a unique session id (its marker). After the run, each
marker is classified by what the gateway answered and what arrived on a queue
bound to `#`: lost (answered 200, never arrived), duplicated (arrived more than
once), unexpected (arrived, never sent), wrong ids (a copy whose event id is not
the one answered, or copies of one marker with different ids: a replay under a
fresh id, which a consumer deduplicating by id would apply twice).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
from aiormq.abc import FieldTable
from multidict import CIMultiDictProxy

from core import contract
from core.amqp import declare_topology

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "entered.json"


def marked_body(template: dict[str, Any], marker: str) -> bytes:
    body = dict(template)
    body["sessionId"] = marker
    body["session"] = dict(template["session"], sessionId=marker, sessionToken=marker)
    return orjson.dumps(body)


@dataclass
class Sent:
    """What the load saw: the status (or error) per marker and the event id of each 200."""

    status: dict[str, int | str] = field(default_factory=dict)
    event_ids: dict[str, str] = field(default_factory=dict)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    # When each answer came (time.monotonic()): what was answered during a fault.
    answered_at: dict[str, float] = field(default_factory=dict)

    def record(self, marker: str, status: int | str, event_id: str | None = None) -> None:
        self.status[marker] = status
        self.answered_at[marker] = time.monotonic()
        if event_id is not None:
            self.event_ids[marker] = event_id
        self.answered.set()

    @property
    def acknowledged(self) -> set[str]:
        return {m for m, s in self.status.items() if s == 200}


@dataclass(frozen=True)
class Verdict:
    sent: int
    acknowledged: int
    arrived: int
    lost: frozenset[str]
    duplicated: dict[str, int]
    unexpected: frozenset[str]
    wrong_ids: frozenset[str]

    @property
    def extra_copies(self) -> int:
        """Copies beyond the first: what a consumer that is not idempotent pays for."""
        return sum(count - 1 for count in self.duplicated.values())

    def summary(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "arrived": self.arrived,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "extra_copies": self.extra_copies,
            "unexpected": len(self.unexpected),
            "wrong_ids": len(self.wrong_ids),
        }


async def post_one(
    session: aiohttp.ClientSession, url: str, marker: str, body: bytes, sent: Sent
) -> CIMultiDictProxy[str] | None:
    """POST `body`, its answer (or the error that came instead) recorded in `sent`; the
    answer's headers, or None when there was none."""
    try:
        async with session.post(url, data=body) as response:
            await response.read()
            sent.record(marker, response.status, response.headers.get("X-Event-Id"))
            return response.headers
    except (TimeoutError, aiohttp.ClientError) as exc:
        sent.record(marker, type(exc).__name__)
        return None


async def send_load(
    url: str,
    token: str,
    batch: list[str],
    concurrency: int,
    sent: Sent | None = None,
    timeout_s: float = 30.0,
) -> Sent:
    """POST one marked `entered` body per marker of `batch`, `concurrency` at a time, to a
    loopback URL, recording the answers in `sent` as they come."""
    assert url.startswith(("http://127.0.0.1", "http://localhost")), "loopback only"
    template = orjson.loads(EXAMPLE.read_bytes())
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    sent, slots = sent or Sent(), asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as s:

        async def one(marker: str) -> None:
            async with slots:
                await post_one(s, url, marker, marked_body(template, marker), sent)

        await asyncio.gather(*(one(m) for m in batch))
    return sent


async def until_answered(sent: Sent, count: int, timeout_s: float = 30.0) -> None:
    """Wait until `count` requests were answered: the moment to cause a fault mid-load."""
    async with asyncio.timeout(timeout_s):
        while len(sent.status) < count:
            sent.answered.clear()
            await sent.answered.wait()


def markers(run: str, count: int) -> list[str]:
    """Unique markers sharing the prefix `run-`, by which `collect` tells this run's events."""
    return [f"{run}-{i}" for i in range(count)]


def marker_of(body: bytes, run: str) -> tuple[str, str] | None:
    """(marker, event id) of one of this run's events; None for anything else on the queue."""
    try:
        event = contract.Event.from_body(body)
    except ValueError:
        return None
    marker = str(event.data.get("sessionId"))
    return (marker, event.id) if marker.startswith(f"{run}-") else None


async def checker_queue(amqp_url: str, prefix: str, arguments: FieldTable | None = None) -> str:
    """A fresh durable queue bound to `#`, the checker's view of all that is published;
    durable, so that confirmed events survive a broker crash in it. `collect` reads it."""
    name = f"{prefix}.{uuid.uuid4().hex}"
    connection = await aio_pika.connect(amqp_url)
    async with connection, connection.channel() as channel:
        await declare_topology(channel)
        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        await queue.bind(contract.EXCHANGE, "#")
    return name


async def delete_queue(amqp_url: str, name: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection, connection.channel() as channel:
        await channel.queue_delete(name)


async def collect(
    amqp_url: str,
    queue_name: str,
    run: str,
    expected: set[str],
    timeout_s: float,
    quiet_s: float = 2.0,
) -> list[tuple[str, str]]:
    """(marker, event id) of every event of `run` on the queue, until all expected arrived
    and nothing more came for `quiet_s`, or `timeout_s` passed. Other messages (another
    producer on a shared broker) are passed over."""
    arrived: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout_s
    connection = await aio_pika.connect(amqp_url)
    async with connection, connection.channel() as channel:
        queue = await channel.get_queue(queue_name)
        last = time.monotonic()
        while time.monotonic() < deadline:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                seen = {m for m, _ in arrived}
                if expected <= seen and time.monotonic() - last > quiet_s:
                    break
                await asyncio.sleep(0.05)
                continue
            last = time.monotonic()
            mine = marker_of(message.body, run)
            if mine is not None:
                arrived.append(mine)
    return arrived


def classify(sent_markers: list[str], sent: Sent, arrived: list[tuple[str, str]]) -> Verdict:
    counts = Counter(m for m, _ in arrived)
    ids: dict[str, set[str]] = {}
    for marker, event_id in arrived:
        ids.setdefault(marker, set()).add(event_id)
    acknowledged = sent.acknowledged
    return Verdict(
        sent=len(sent_markers),
        acknowledged=len(acknowledged),
        arrived=len(arrived),
        lost=frozenset(acknowledged - counts.keys()),
        duplicated={m: c for m, c in counts.items() if c > 1},
        unexpected=frozenset(counts.keys() - set(sent_markers)),
        wrong_ids=frozenset(m for m, found in ids.items() if not _one_right_id(m, found, sent)),
    )


def _one_right_id(marker: str, found: set[str], sent: Sent) -> bool:
    """Every copy carries one id, the one answered if the marker was answered 200."""
    return len(found) == 1 and found <= {sent.event_ids.get(marker, next(iter(found)))}
