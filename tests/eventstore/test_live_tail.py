"""The shared live window of a followed stream: what ``after`` hands a follower."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eventstore import RecordedEvent
from eventstore.live import TAIL_WINDOW, StreamTail


def event(seq: int) -> RecordedEvent:
    return RecordedEvent(seq, "s", seq, "t", "{}", "", "")


@given(
    first=st.integers(1, 50),
    pushed=st.integers(0, TAIL_WINDOW + 100),
    cursor=st.integers(0, TAIL_WINDOW + 200),
    limit=st.integers(1, TAIL_WINDOW + 10),
)
async def test_after_is_the_next_events_of_the_window_or_none(
    first: int, pushed: int, cursor: int, limit: int
) -> None:
    tail = StreamTail()
    tail.push(event(seq) for seq in range(first, first + pushed))
    held = [e.seq for e in tail.recent]
    got = tail.after(cursor, limit)
    if not held:
        assert got is None
    elif cursor >= held[-1]:
        assert got == []
    elif cursor + 1 < held[0]:
        assert got is None  # not covered: the follower reads the log
    else:
        assert got is not None
        assert [e.seq for e in got] == [s for s in held if s > cursor][:limit]
