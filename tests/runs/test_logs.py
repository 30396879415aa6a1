"""A JSON log line's shape: the event, its level and a UTC timestamp with microseconds."""

from __future__ import annotations

import datetime
import io
import json
import re
import time

import pytest
import structlog

from runs.logs import _timestamp, configure_logging, info

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_a_json_line_has_the_event_its_level_and_the_time() -> None:
    out = io.StringIO()
    configure_logging(out, json=True)
    try:
        before = datetime.datetime.now(datetime.UTC)
        structlog.get_logger("test").info("request", status=201, route="/v1/threads")
        after = datetime.datetime.now(datetime.UTC)
    finally:
        structlog.reset_defaults()
    line = json.loads(out.getvalue())
    assert line["event"] == "request"
    assert line["level"] == "info"
    assert line["status"] == 201
    assert ISO_UTC.match(line["timestamp"]), line
    stamped = datetime.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert before <= stamped <= after


@pytest.mark.parametrize(
    "nanoseconds",
    [1_764_577_599_000_000_000, 1_764_577_599_999_999_999, 1_764_577_600_000_001_500],
)
def test_the_timestamp_is_what_datetime_gives_to_the_microsecond(
    monkeypatch: pytest.MonkeyPatch, nanoseconds: int
) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: nanoseconds - 3_600_000_000_000)
    _timestamp(None, "info", {})  # the cached second is another one
    monkeypatch.setattr(time, "time_ns", lambda: nanoseconds)
    expected = datetime.datetime.fromtimestamp(nanoseconds // 1000 / 1e6, datetime.UTC)
    text = _timestamp(None, "info", {})["timestamp"]
    assert text == expected.isoformat(timespec="microseconds").replace("+00:00", "Z")
    assert _timestamp(None, "info", {})["timestamp"] == text  # the cached second


def test_a_json_line_carries_a_formatted_exception_and_any_value_as_its_repr() -> None:
    out = io.StringIO()
    configure_logging(out, json=True)
    try:
        log = structlog.get_logger("test")
        try:
            _fail()
        except ValueError:
            log.exception("commit.failed", payload=Opaque())
        log.warning("slow", seconds=2)
        log.info("plain")
    finally:
        structlog.reset_defaults()
    failed, slow, plain = (json.loads(line) for line in out.getvalue().splitlines())
    assert failed["level"] == "error"
    assert "Traceback" in failed["exception"]
    assert "ValueError: the disk is full" in failed["exception"]
    assert "exc_info" not in failed
    assert failed["payload"] == "<opaque>"
    assert slow["level"] == "warning"
    assert slow["seconds"] == 2
    assert "exception" not in plain
    assert list(plain) == ["event", "level", "timestamp"]


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


def _fail() -> None:
    raise ValueError("the disk is full")


def test_info_writes_the_line_structlog_writes_with_the_context_bound() -> None:
    """``runs.logs.info`` skips structlog's chain under the JSON output: the line must be the
    one structlog writes, keys in the same order, context variables included."""
    out = io.StringIO()
    configure_logging(out, json=True)
    log = structlog.get_logger("test")
    try:
        structlog.contextvars.bind_contextvars(trace_id="t" * 32)
        log.info("request", status=201, run_id=None, took={"ms": 1.5})
        info(log, "request", status=201, run_id=None, took={"ms": 1.5})
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    through_structlog, direct = (json.loads(x) for x in out.getvalue().splitlines())
    assert list(direct) == list(through_structlog)
    assert direct.pop("timestamp") >= through_structlog.pop("timestamp")  # written after it
    assert direct == through_structlog
    assert direct["trace_id"] == "t" * 32


def test_info_goes_through_whatever_replaced_the_json_output() -> None:
    out = io.StringIO()
    configure_logging(out, json=True)
    log = structlog.get_logger("test")
    try:
        with structlog.testing.capture_logs() as captured:
            info(log, "request", status=200)
        assert out.getvalue() == ""  # captured, not written
        info(log, "after", status=201)  # the JSON output is back
        assert json.loads(out.getvalue())["event"] == "after"
        console = io.StringIO()
        configure_logging(console, json=False)
        info(structlog.get_logger("test"), "console", status=204)
    finally:
        structlog.reset_defaults()
    assert captured == [{"event": "request", "status": 200, "log_level": "info"}]
    assert "console" in console.getvalue()
    assert "status=204" in console.getvalue()
    assert not console.getvalue().startswith("{")
