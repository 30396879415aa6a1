"""Frames are built in one loop, from events (``sse_frames``, live) or from the stored bytes
(``wire_frames``, catch-up): byte for byte the frames that ``sse_frame`` makes of each event,
whatever the payload, the type or the time holds."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from eventstore import NewEvent, RecordedEvent
from eventstore.sqlite import SQLiteEventStore
from runs.sse import sse_frame, sse_frames, stream_events, wire_frames

texts = st.text(st.characters(codec="utf-8"), max_size=30)
#: A delta's payload as the log holds it (msgspec's spelling, or another JSON encoder's).
delta_payloads = st.one_of(
    st.builds(lambda c: msgspec.json.encode({"content": c, "call": 1}).decode(), texts),
    st.builds(lambda c: json.dumps({"content": c, "role": "assistant"}), texts),
    st.just('{"content":"x"}  '),
)
other_payloads = st.one_of(st.builds(lambda v: json.dumps({"value": v}), texts), st.just("{}"))
typed_payloads = st.one_of(
    st.tuples(st.just("message.delta"), delta_payloads),
    st.tuples(st.sampled_from(["run.started", "run.completed", 'odd"type\\é']), other_payloads),
)
events = st.lists(
    st.builds(
        lambda seq, typed, created_at: RecordedEvent(
            seq, "run-x", seq, typed[0], typed[1], created_at, ""
        ),
        st.integers(1, 10**12),
        typed_payloads,
        st.one_of(st.just("2026-01-01T00:00:00.000Z"), texts),
    ),
    max_size=5,
)


@given(events)
def test_the_batch_is_each_frame_in_turn(batch: list[RecordedEvent]) -> None:
    expected = b"".join(sse_frame(e.seq, e.type, e.data, e.created_at) for e in batch)
    assert sse_frames(batch) == expected
    rows = [(b"%d" % e.seq, e.type.encode(), e.data.encode(), e.created_at.encode()) for e in batch]
    assert wire_frames(rows) == expected


def test_a_delta_carries_its_text_twice() -> None:
    event = RecordedEvent(3, "run-x", 3, "message.delta", '{"content":"h\\u00e9"}', "t", "")
    frame = sse_frames([event])
    assert frame.startswith(b"id: 3\ndata: ")
    assert json.loads(frame[len(b"id: 3\ndata: ") : -2]) == {
        "seq": 3,
        "type": "message.delta",
        "data": {"content": "hé", "content_delta": "hé"},
        "created_at": "t",
    }


def test_live_frames_are_encoded_once_per_range_and_the_cache_is_bounded() -> None:
    from runs import sse

    store = object()
    events = [RecordedEvent(s, "run-x", s, "run.started", "{}", "t", "") for s in (4, 5)]
    first = sse._live_frames(store, "run-x", events)  # type: ignore[arg-type]
    assert first == sse_frames(events)
    # Another follower at the same cursor gets the very same bytes, not a new encoding.
    assert sse._live_frames(store, "run-x", list(events)) is first  # type: ignore[arg-type]
    for seq in range(1, 3 * sse._RECENT_FRAMES):
        one = [RecordedEvent(seq, "run-y", seq, "run.started", "{}", "t", "")]
        assert sse._live_frames(store, "run-y", one) == sse_frames(one)  # type: ignore[arg-type]
    assert len(sse._recent_frames) <= sse._RECENT_FRAMES


def test_frames_written_from_commits_are_counted_on_every_event_loop() -> None:
    """Sinks count their frames and add them to the metric once per turn of the loop; a count
    left due on a loop that closed first (one test's) is not lost to the next loop's."""
    import asyncio

    from prometheus_client import REGISTRY

    from runs import sse

    def sent() -> float:
        return REGISTRY.get_sample_value("runlog_sse_frames_sent_total") or 0.0

    async def count(frames: int, turns: int) -> None:
        for _ in range(frames):
            sse._frame_count.add(1)
        for _ in range(turns):
            await asyncio.sleep(0)

    before = sent()
    asyncio.run(count(3, 1))
    assert sent() == before + 3
    # Left due on a loop that stops before its flush runs...
    loop = asyncio.new_event_loop()

    def add_and_stop() -> None:
        sse._frame_count.add(2)
        loop.stop()

    loop.call_soon(add_and_stop)
    loop.run_forever()
    loop.close()
    assert sent() == before + 3
    # ...the next loop still counts: its own and the ones left over.
    asyncio.run(count(4, 1))
    assert sent() == before + 3 + 2 + 4


class _Writes:
    """A response that records what was written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(data)


async def test_the_opening_comment_goes_out_with_the_first_history_batch(tmp_path: Path) -> None:
    """``stream_events`` sends its opening with the first batch of history (one send), or
    with the end of the stream when the history already ends the run."""
    store = await SQLiteEventStore.open(str(tmp_path / "s.db"), [])
    try:
        await store.append(
            "run-a",
            [NewEvent("run.started", b"{}"), NewEvent("message.delta", b'{"content":"x"}')],
            0,
        )
        await store.append(
            "run-b", [NewEvent("run.started", b"{}"), NewEvent("run.completed", b"{}")], 0
        )
        history = wire_frames(await store.read_stream_wire("run-a", 0, 10))
        ended = wire_frames(await store.read_stream_wire("run-b", 0, 10))

        async def stream(name: str, after_seq: int, follow: bool) -> tuple[list[bytes], bytes]:
            response = _Writes()
            last = await stream_events(
                store,
                response,  # type: ignore[arg-type]
                name,
                after_seq=after_seq,
                follow=follow,
                ended=False,
                batch_limit=10,
                heartbeat_s=30.0,
                opening=b": ping\n\n",
            )
            return response.writes, last

        assert await stream("run-a", 0, False) == ([b": ping\n\n" + history], b"")
        assert await stream("run-b", 0, True) == ([], b": ping\n\n" + ended)
        assert await stream("run-a", 2, False) == ([], b": ping\n\n")  # no history: at the end
    finally:
        await store.close()
