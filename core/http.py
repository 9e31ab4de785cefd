"""What the gateway and the presence API answer alike: RFC 9457 problem documents and the
request id every answer carries."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict

X_REQUEST_ID: Final = "X-Request-Id"
PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
REQUEST_ID: Final = web.RequestKey("request_id", str)


class Problem(BaseModel):
    """An RFC 9457 problem document, as the OpenAPI documents describe every error."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str


def request_id(request: web.BaseRequest) -> str:
    """The client's `X-Request-Id` if it is usable (1 to 128 printable characters), else a
    new one; made once per request, so that its answer and every log line agree."""
    known = request.get(REQUEST_ID)
    if known is None:
        given = request.headers.get(X_REQUEST_ID, "")
        usable = 0 < len(given) <= 128 and given.isprintable()
        known = request[REQUEST_ID] = given if usable else os.urandom(16).hex()
    return known


def problem(
    status: int,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """An RFC 9457 problem document; `extra` members join the standard ones."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail} | extra
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=PROBLEM_MEDIA_TYPE, headers=headers
    )
