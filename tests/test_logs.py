"""Unit tests of the JSON log formatter (core.logs)."""

from __future__ import annotations

import io
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from core import logs


class Captured:
    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.logger = logging.getLogger(f"test.logs.{uuid.uuid4().hex}")

    def lines(self) -> list[dict[str, Any]]:
        text = self.stream.getvalue()
        assert text.endswith("\n")
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def captured() -> Iterator[Captured]:
    cap = Captured()
    handler = logging.StreamHandler(cap.stream)
    handler.setFormatter(logs.JsonFormatter())
    cap.logger.addHandler(handler)
    cap.logger.setLevel(logging.DEBUG)
    cap.logger.propagate = False
    yield cap
    cap.logger.removeHandler(handler)


def test_one_json_object_per_line_with_level_logger_and_message(captured: Captured) -> None:
    captured.logger.info("hello %s", "world")
    captured.logger.warning("multi\nline\tmessage")
    first, second = captured.lines()
    assert (first["level"], first["message"], first["logger"]) == (
        "INFO",
        "hello world",
        captured.logger.name,
    )
    assert (second["level"], second["message"]) == ("WARNING", "multi\nline\tmessage")
    moment = datetime.fromisoformat(first["time"])
    assert moment.utcoffset() == timedelta(0)


def test_extra_fields_are_top_level_and_standard_attributes_are_not(captured: Captured) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque-thing"

    captured.logger.info(
        "published",
        extra={"request_id": "r-1", "count": 3, "names": ["a", "b"], "thing": Opaque()},
    )
    (line,) = captured.lines()
    assert line["request_id"] == "r-1"
    assert (line["count"], line["names"], line["thing"]) == (3, ["a", "b"], "opaque-thing")
    for standard in ("msg", "args", "pathname", "lineno", "levelno", "exc_info", "taskName"):
        assert standard not in line
    assert "exception" not in line


async def test_no_task_name_inside_a_task(captured: Captured) -> None:
    captured.logger.info("in a coroutine")
    (line,) = captured.lines()
    assert "taskName" not in line


def test_exception_is_included(captured: Captured) -> None:
    try:
        raise RuntimeError("boom-42")
    except RuntimeError:
        captured.logger.exception("failed", extra={"kind": "entered"})
    (line,) = captured.lines()
    assert (line["level"], line["message"], line["kind"]) == ("ERROR", "failed", "entered")
    assert "Traceback" in line["exception"]
    assert "RuntimeError: boom-42" in line["exception"]


def test_configure_installs_one_json_handler_on_stderr() -> None:
    root = logging.getLogger()
    quieted = [logging.getLogger(name) for name in ("aiormq", "aio_pika")]
    saved = root.handlers[:], root.level, [q.level for q in quieted]
    try:
        logs.configure("DEBUG")
        (handler,) = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        assert isinstance(handler.formatter, logs.JsonFormatter)
        assert handler.stream is sys.stderr
        assert root.level == logging.DEBUG
        assert logging.getLogger("aiormq").level == logging.WARNING
        logs.configure("ERROR")
        assert len(root.handlers) == 1
        assert logging.getLogger("aio_pika").level == logging.ERROR
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for logger, level in zip(quieted, saved[2], strict=True):
            logger.setLevel(level)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:s3cret@10.0.0.1:5672/", "amqp://guest:***@10.0.0.1:5672/"),
        ("postgresql://aifi:s3cret@db/ledger", "postgresql://aifi:***@db/ledger"),
        ("amqp://10.0.0.1:5672/", "amqp://10.0.0.1:5672/"),
    ],
)
def test_redact_hides_a_urls_password(url: str, shown: str) -> None:
    assert logs.redact(url) == shown
