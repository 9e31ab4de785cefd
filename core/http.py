"""What the gateway and the presence API answer alike: RFC 9457 problem documents (and
the `Rejection` that raises one), the request id every answer carries, the metrics
exposition, and the buckets of their request latency histograms."""

from __future__ import annotations

import os
from typing import Any, Final, TypeVar

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import LooseHeaders
from pydantic import BaseModel, ConfigDict

X_REQUEST_ID: Final = "X-Request-Id"
PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
REQUEST_ID: Final = web.RequestKey("request_id", str)
METRICS_MEDIA_TYPE: Final = "text/plain; version=0.0.4"
AnswerT = TypeVar("AnswerT", bound=web.StreamResponse)
LATENCY_BUCKETS_S: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
)  # fmt: skip


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


def stamped(request: web.BaseRequest, response: AnswerT) -> AnswerT:
    """`response` with the request id: every answer carries one. Both apps stamp here, where
    the answer is made (the gateway's handlers, the presence API's middleware), rather than in
    a response signal, which would cost every gateway request an extra await."""
    response.headers[X_REQUEST_ID] = request_id(request)
    return response


def problem(
    status: int,
    title: str,
    detail: str,
    headers: LooseHeaders | None = None,
    **extra: Any,
) -> web.Response:
    """An RFC 9457 problem document; `extra` members join the standard ones."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail} | extra
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


class Rejection(Exception):
    """A request refused, answered as a problem document: `headers` go with the answer
    (`Retry-After`, `WWW-Authenticate`), `extra` members join the document's."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        headers: LooseHeaders | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.headers, self.extra = headers, extra

    def response(self) -> web.Response:
        return problem(self.status, self.title, self.detail, self.headers, **self.extra)


def exposition(body: bytes) -> web.Response:
    """A Prometheus scrape's answer, `body` in the text format."""
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: METRICS_MEDIA_TYPE})
