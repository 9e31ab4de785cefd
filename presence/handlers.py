"""The routes: each reads the ledger through the app's `Reader` and answers a model as JSON."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from aiohttp import hdrs, web
from pydantic import BaseModel

from core import http
from core.auth import TokenTable
from core.http import Rejection
from ledger.effects import Row
from ledger.errors import LedgerUnavailable
from ledger.ledger import Ledger
from presence.metrics import Metrics
from presence.models import Health, Readiness, StoreOccupancy, Stores, Tracking, Visit
from presence.reader import NotOpen, Reader

T = TypeVar("T")
JSON: Final = "application/json"
RETRY_AFTER_S: Final = 5
STORE_ID: Final = re.compile(r"-?[0-9]{1,19}")
BIGINT: Final = range(-(2**63), 2**63)  # the ledger's store_id column


@dataclass(frozen=True, slots=True)
class State:
    """What the presence API's handlers read; built once at start-up, never replaced."""

    reader: Reader
    tokens: TokenTable
    metrics: Metrics
    openapi: bytes
    ready_timeout_s: float


STATE: Final = web.AppKey("state", State)


def answer(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(status=status, text=model.model_dump_json(), content_type=JSON)


def store_id(text: str) -> int:
    """The path's storeId as the ledger keeps it (a 64-bit integer), else a 422."""
    if not STORE_ID.fullmatch(text) or int(text) not in BIGINT:
        raise Rejection(422, "Unprocessable Content", f"storeId must be a 64-bit integer: {text!r}")
    return int(text)


async def read(request: web.Request, query: Callable[[Ledger], Awaitable[T]]) -> T:
    """`query` on the open ledger; a 503 while the ledger cannot be read."""
    try:
        return await query(request.app[STATE].reader.current())
    except (NotOpen, LedgerUnavailable):
        detail = "the ledger cannot be read now; /readyz says why"
        retry = {hdrs.RETRY_AFTER: str(RETRY_AFTER_S)}
        raise Rejection(503, "Service Unavailable", detail, retry) from None


def not_found(what: str) -> Rejection:
    return Rejection(404, "Not Found", f"no {what} in the ledger")


async def stores(request: web.Request) -> web.Response:
    rows = await read(request, lambda ledger: ledger.occupancy())
    listed = [StoreOccupancy.model_validate(row) for row in rows]
    return answer(Stores(occupancy=sum(s.occupancy for s in listed), stores=listed))


async def store(request: web.Request) -> web.Response:
    wanted = store_id(request.match_info["storeId"])
    rows = await read(request, lambda ledger: ledger.occupancy(wanted))
    return found(StoreOccupancy, rows[0] if rows else None, f"visit to store {wanted}")


async def session(request: web.Request) -> web.Response:
    wanted = request.match_info["sessionId"]
    row = await read(request, lambda ledger: ledger.visit(wanted))
    return found(Visit, row, f"session {wanted!r}")


async def tracking(request: web.Request) -> web.Response:
    wanted = request.match_info["uniqueEventId"]
    row = await read(request, lambda ledger: ledger.tracking(wanted))
    return found(Tracking, row, f"tracking event {wanted!r}")


def found(model: type[BaseModel], row: Row | None, what: str) -> web.Response:
    """The row as `model`, or a 404 problem naming `what`."""
    if row is None:
        raise not_found(what)
    return answer(model.model_validate(row))


async def healthz(request: web.Request) -> web.Response:
    return answer(Health(status="alive"))


async def readyz(request: web.Request) -> web.Response:
    """200 once the ledger is open and its database answers a ping in time, else 503."""
    state = request.app[STATE]
    where = state.reader.where
    try:
        async with asyncio.timeout(state.ready_timeout_s):
            await state.reader.current().ping()
    except (NotOpen, LedgerUnavailable) as exc:
        return answer(Readiness(ready=False, ledger=where, reason=str(exc)), 503)
    except TimeoutError:
        reason = f"no answer within {state.ready_timeout_s:g} s"
        return answer(Readiness(ready=False, ledger=where, reason=reason), 503)
    return answer(Readiness(ready=True, ledger=where))


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        occupancy: list[Row] | None = await state.reader.current().occupancy()
    except (NotOpen, LedgerUnavailable):
        occupancy = None
    body = state.metrics.exposition(occupancy)
    return http.exposition(body)


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].openapi, content_type=JSON)
