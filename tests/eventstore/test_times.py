"""The time every event is stamped with: RFC 3339, UTC, milliseconds, ``Z``."""

from __future__ import annotations

import datetime
import re
import time

import pytest

from eventstore import utc_now

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.mark.parametrize(
    "nanoseconds",
    [
        0,
        1_764_577_599_000_000_000,
        1_764_577_599_999_999_999,  # the last nanosecond of a second: still that second
        1_764_577_600_000_999_999,
        4_102_444_800_123_456_789,  # 2100-01-01
    ],
)
def test_utc_now_is_what_datetime_gives_to_the_millisecond(
    monkeypatch: pytest.MonkeyPatch, nanoseconds: int
) -> None:
    expected = datetime.datetime.fromtimestamp(nanoseconds // 1_000_000 / 1e3, datetime.UTC)
    spelt = expected.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    monkeypatch.setattr(time, "time_ns", lambda: nanoseconds)
    assert utc_now() == spelt
    assert RFC3339_MS.match(spelt)


def test_utc_now_follows_the_clock_across_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The text of a second is remembered: the next second, or an earlier one (the clock was
    set back), is spelt anew."""
    base = 1_764_577_599 * 1_000_000_000
    for offset_ms, spelt in [
        (0, "2025-12-01T08:26:39.000Z"),
        (999, "2025-12-01T08:26:39.999Z"),
        (1_000, "2025-12-01T08:26:40.000Z"),
        (-61_000, "2025-12-01T08:25:38.000Z"),
        (1_001, "2025-12-01T08:26:40.001Z"),
    ]:
        monkeypatch.setattr(time, "time_ns", lambda o=offset_ms: base + o * 1_000_000)
        assert utc_now() == spelt


def test_utc_now_is_the_current_time() -> None:
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    stamped = datetime.datetime.fromisoformat(utc_now().replace("Z", "+00:00"))
    after = datetime.datetime.now(datetime.UTC)
    assert before <= stamped <= after
