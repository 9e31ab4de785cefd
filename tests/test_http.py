"""What the gateway and the presence API answer alike."""

from __future__ import annotations

import re

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from core import http


@pytest.mark.parametrize("given", ["abc-123", "x" * 128])
def test_a_usable_request_id_is_echoed(given: str) -> None:
    assert (
        http.request_id(make_mocked_request("GET", "/", headers={"X-Request-Id": given})) == given
    )


@pytest.mark.parametrize("given", [None, "", "x" * 129, "tab\there"])
def test_otherwise_one_is_made_up(given: str | None) -> None:
    headers = {} if given is None else {"X-Request-Id": given}
    made = http.request_id(make_mocked_request("GET", "/", headers=headers))
    assert re.fullmatch("[0-9a-f]{32}", made)
    assert made != http.request_id(make_mocked_request("GET", "/", headers=headers))


def test_a_problem_is_rfc_9457_json_with_its_headers_and_members() -> None:
    answer = http.problem(429, "Too Many Requests", "slow down", {"Retry-After": "5"}, limit=3)
    assert (answer.status, answer.content_type) == (429, "application/problem+json")
    assert answer.headers["Retry-After"] == "5"
    assert isinstance(answer.body, bytes)
    assert orjson.loads(answer.body) == {
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "slow down",
        "limit": 3,
    }


def test_a_made_up_request_id_is_made_once_per_request() -> None:
    request = make_mocked_request("GET", "/")
    assert http.request_id(request) == http.request_id(request)


def test_a_rejection_answers_its_headers_apart_from_its_problem_members() -> None:
    rejection = http.Rejection(
        429, "Too Many Requests", "slow down", {"Retry-After": "3"}, errors=["x"]
    )
    response = rejection.response()
    assert response.status == 429
    assert response.headers["Retry-After"] == "3"
    assert response.content_type == http.PROBLEM_MEDIA_TYPE
    assert isinstance(response.body, bytes)
    body = orjson.loads(response.body)
    assert body["errors"] == ["x"]
    assert "Retry-After" not in body


def test_the_metrics_answer_is_prometheus_text() -> None:
    response = http.exposition(b"up 1\n")
    assert response.headers["Content-Type"] == http.METRICS_MEDIA_TYPE
    assert response.body == b"up 1\n"


def test_an_answer_is_stamped_with_the_request_id_its_logs_carry() -> None:
    request = make_mocked_request("GET", "/")
    answer = http.stamped(request, http.exposition(b""))
    assert answer.headers["X-Request-Id"] == http.request_id(request)
