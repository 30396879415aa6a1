"""subscribe(): catch-up from the log, then live events, with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
import pytest

from eventstore import NewEvent, RecordedEvent, live
from eventstore.live import TAIL_WINDOW


def ev(i: int) -> NewEvent:
    return NewEvent("Tick", msgspec.json.encode({"i": i}))


async def collect(store: Any, stream: str, after_seq: int, until_seq: int) -> list[RecordedEvent]:
    received: list[RecordedEvent] = []
    async with contextlib.aclosing(store.subscribe(stream, after_seq)) as events:
        async for event in events:
            received.append(event)
            if event.seq >= until_seq:
                break
    return received


async def test_hand_over_from_log_to_live_has_no_gap_and_no_duplicate(store: Any) -> None:
    existing, more = 700, 1200
    for start in range(0, existing, 100):
        await store.append("s", [ev(i) for i in range(start, start + 100)])
    total = existing + more

    async def keep_appending() -> None:
        # Singles and small batches, from several tasks, plus noise on another stream, so
        # commits land while the subscriber is reading the log and while it waits.
        async def producer(k: int) -> None:
            for i in range(k, more, 4):
                await store.append("s", [ev(existing + i)])
                await store.append("other", [ev(i)])

        await asyncio.gather(*(producer(k) for k in range(4)))

    async with asyncio.timeout(30):
        received, _ = await asyncio.gather(collect(store, "s", 0, total), keep_appending())

    assert [e.seq for e in received] == list(range(1, total + 1))
    assert all(e.stream == "s" for e in received)
    assert received == await store.read_stream("s", 0, total + 10)
    assert store.live.followed_streams == 0


async def test_batches_are_consecutive_and_a_commit_arrives_whole(store: Any) -> None:
    await store.append("s", [ev(i) for i in range(7)])
    async with asyncio.timeout(10), contextlib.aclosing(store.subscribe_batches("s", 2, 3)) as it:
        # Catch-up in batches of at most the limit.
        assert [[e.seq for e in b] for b in (await anext(it), await anext(it))] == [
            [3, 4, 5],
            [6, 7],
        ]
        waiting = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await store.append("s", [ev(7), ev(8), ev(9)])
        assert [e.seq for e in await waiting] == [8, 9, 10]
        await store.append("other", [ev(0)])
        await store.append("s", [ev(10)])
        assert [e.seq for e in await anext(it)] == [11]
    assert store.live.followed_streams == 0


async def test_subscribe_from_the_end_receives_only_later_events(store: Any) -> None:
    await store.append("s", [ev(i) for i in range(10)])

    async with asyncio.timeout(10), contextlib.aclosing(store.subscribe("s", 10)) as events:
        first = asyncio.ensure_future(anext(events))
        await store.append("s", [ev(10), ev(11)])
        received = [await first, await anext(events)]

    assert [e.seq for e in received] == [11, 12]
    assert store.live.followed_streams == 0


async def test_subscribe_past_the_end_skips_to_after_the_cursor(store: Any) -> None:
    await store.append("s", [ev(i) for i in range(3)])

    async with asyncio.timeout(10), contextlib.aclosing(store.subscribe("s", 5)) as events:
        first = asyncio.ensure_future(anext(events))
        await store.append("s", [ev(3), ev(4)])  # seqs 4 and 5: not after the cursor
        await store.append("s", [ev(5)])  # seq 6
        received = await first

    assert received.seq == 6


async def test_subscribe_to_a_new_stream_waits_for_its_first_event(store: Any) -> None:
    async with asyncio.timeout(10), contextlib.aclosing(store.subscribe("new", 0)) as events:
        first = asyncio.ensure_future(anext(events))
        await store.append("elsewhere", [ev(0)])
        await store.append("new", [ev(1)], 0)
        received = await first

    assert (received.stream, received.seq, received.position) == ("new", 1, 2)


def count_log_reads(store: Any, monkeypatch: Any) -> list[int]:
    """The cursors of the store's reads of a stream from the log, from now on."""
    log_reads: list[int] = []
    read_stream = store.read_stream

    async def counting_read_stream(stream: str, after_seq: int = 0, limit: int = 500) -> Any:
        log_reads.append(after_seq)
        return await read_stream(stream, after_seq, limit)

    monkeypatch.setattr(store, "read_stream", counting_read_stream)
    return log_reads


async def test_slow_subscriber_falls_back_to_the_log(store: Any, monkeypatch: Any) -> None:
    log_reads = count_log_reads(store, monkeypatch)
    total = 3 * TAIL_WINDOW + 7

    async with asyncio.timeout(30), contextlib.aclosing(store.subscribe("s", 0)) as events:
        first = asyncio.ensure_future(anext(events))
        await store.append("s", [ev(0)])
        received = [await first]
        # The subscriber is parked while far more than the in-memory window is committed.
        for start in range(1, total, 50):
            await store.append("s", [ev(i) for i in range(start, min(start + 50, total))])
        log_reads_before = len(log_reads)
        while received[-1].seq < total:
            received.append(await anext(events))

    assert [e.seq for e in received] == list(range(1, total + 1))
    assert [msgspec.json.decode(e.data)["i"] for e in received] == list(range(total))
    # It could not have been served from memory alone: it read the log after falling behind.
    assert len(log_reads) > log_reads_before
    assert any(after >= 1 for after in log_reads[log_reads_before:])
    assert store.live.followed_streams == 0


async def test_many_subscribers_share_one_tail_and_release_it(store: Any) -> None:
    await store.append("s", [ev(i) for i in range(5)])

    async def one(after: int) -> list[int]:
        return [e.seq for e in await collect(store, "s", after, 8)]

    async with asyncio.timeout(10):
        tasks = [asyncio.ensure_future(one(after)) for after in range(6)]
        await store.append("s", [ev(5)])  # a round trip: every subscriber has started
        assert store.live.followed_streams == 1
        assert store.live.subscribers == 6
        await store.append("s", [ev(6), ev(7)])
        results = await asyncio.gather(*tasks)

    assert results == [list(range(after + 1, 9)) for after in range(6)]
    assert store.live.followed_streams == 0
    assert store.live.subscribers == 0


async def test_subscriber_closed_while_waiting_releases_the_stream(store: Any) -> None:
    subscription = store.subscribe("s", 0)
    waiting = asyncio.ensure_future(anext(subscription))
    await store.append("other", [ev(0)])  # a full round trip through the writer
    assert not waiting.done()
    assert store.live.followed_streams == 1

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await subscription.aclose()

    assert store.live.followed_streams == 0


async def test_subscriber_ends_when_the_store_closes(store: Any) -> None:
    async with asyncio.timeout(10), contextlib.aclosing(store.subscribe("s", 0)) as events:
        first = asyncio.ensure_future(anext(events))
        await store.append("s", [ev(0)])
        assert (await first).seq == 1
        waiting = asyncio.ensure_future(anext(events))
        await store.close()
        # A parked subscriber is woken and its iterator ends instead of hanging.
        with pytest.raises(StopAsyncIteration):
            await waiting

    assert store.live.followed_streams == 0


async def test_watchers_see_every_committed_batch_and_cannot_stop_the_writer(store: Any) -> None:
    seen: list[tuple[str, int]] = []

    def broken(events: Any) -> None:
        raise RuntimeError("a bug in a watcher")

    unwatch_broken = store.live.watch(broken)
    unwatch = store.live.watch(lambda events: seen.extend((e.stream, e.seq) for e in events))
    await store.append("a", [ev(1), ev(2)])
    await asyncio.gather(store.append("b", [ev(3)]), store.append("c", [ev(4)]))
    unwatch()
    unwatch_broken()
    await store.append("a", [ev(5)])  # no longer watched; the writer still works
    assert sorted(seen) == [("a", 1), ("a", 2), ("b", 1), ("c", 1)]
    assert await store.last_seq("a") == 3


class Sink:
    """A ``deliver`` for subscribe_batches that records what it takes and can be told to
    decline."""

    def __init__(self) -> None:
        self.taken: list[list[int]] = []
        self.declined: list[list[int]] = []
        self.accept = True

    def __call__(self, events: list[RecordedEvent]) -> bool:
        seqs = [e.seq for e in events]
        (self.taken if self.accept else self.declined).append(seqs)
        return self.accept


def sinks(store: Any, stream: str) -> int:
    tail = store.live._tails.get(stream)
    return 0 if tail is None else len(tail.sinks)


async def parked(store: Any, stream: str) -> None:
    """Wait until the one subscriber of ``stream`` has left its sink (its reads done)."""
    while sinks(store, stream) != 1:
        await asyncio.sleep(0.005)


async def test_a_caught_up_subscriber_hands_live_events_to_its_sink(store: Any) -> None:
    """Once caught up, a subscriber with ``deliver`` leaves it on the stream's tail: later
    commits go to it without being yielded. A batch it declines is yielded, from its cursor,
    and after that the sink takes over again. Nothing is lost or given twice."""
    await store.append("s", [ev(i) for i in range(3)])
    sink = Sink()
    it = store.subscribe_batches("s", 1, 500, sink)
    async with asyncio.timeout(10), contextlib.aclosing(it):
        assert [e.seq for e in await anext(it)] == [2, 3]  # catch-up is yielded
        waiting = asyncio.ensure_future(anext(it))
        await parked(store, "s")
        await store.append("s", [ev(3), ev(4)])
        await store.append("s", [ev(5)])
        assert sink.taken == [[4, 5], [6]]
        assert not waiting.done()
        sink.accept = False
        await store.append("s", [ev(6), ev(7)])
        assert sink.declined == [[7, 8]]
        assert [e.seq for e in await waiting] == [7, 8]
        assert sinks(store, "s") == 0  # declined: its task reads on
        sink.accept = True
        waiting = asyncio.ensure_future(anext(it))
        await parked(store, "s")
        await store.append("s", [ev(8)])
        assert sink.taken == [[4, 5], [6], [9]]
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert store.live.followed_streams == 0


async def test_a_sink_is_not_handed_events_that_do_not_follow_its_cursor(
    store: Any, monkeypatch: Any
) -> None:
    """Events published after a gap (another process's commit seen late, say) wake the
    subscriber instead, which reads the log from its cursor and parks its sink again."""
    log_reads = count_log_reads(store, monkeypatch)
    await store.append("s", [ev(0)])
    sink = Sink()
    it = store.subscribe_batches("s", 1, 500, sink)
    async with asyncio.timeout(10), contextlib.aclosing(it):
        waiting = asyncio.ensure_future(anext(it))
        await parked(store, "s")
        assert log_reads == []  # the store published seq 1: nothing to catch up
        _, three = await store.append("s", [ev(1), ev(2)])
        assert sink.taken == [[2, 3]]
        # seq 5 published without seq 4, and neither is in the log.
        gap = RecordedEvent(three.position + 2, "s", 5, "T", "{}", "t", "h")
        store.live.publish([gap])
        assert sinks(store, "s") == 0  # woken
        await parked(store, "s")  # and parked again, having read the log from its cursor
        assert log_reads == [3]
        await store.append("s", [ev(3)])  # seq 4
        assert sink.taken == [[2, 3], [4]]
        assert sink.declined == []
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert store.live.followed_streams == 0


async def test_a_sink_that_raises_hands_over_to_its_task(store: Any) -> None:
    def broken(events: list[RecordedEvent]) -> bool:
        raise RuntimeError("a bug in a sink")

    it = store.subscribe_batches("s", 0, 500, broken)
    async with asyncio.timeout(10), contextlib.aclosing(it):
        waiting = asyncio.ensure_future(anext(it))
        await parked(store, "s")
        await store.append("s", [ev(1)])
        assert [e.seq for e in await waiting] == [1]
    assert store.live.followed_streams == 0


async def test_a_subscriber_parked_on_its_sink_ends_when_the_store_closes(store: Any) -> None:
    sink = Sink()
    it = store.subscribe_batches("s", 0, 500, sink)
    async with asyncio.timeout(10), contextlib.aclosing(it):
        waiting = asyncio.ensure_future(anext(it))
        await parked(store, "s")
        await store.close()
        with pytest.raises(StopAsyncIteration):
            await waiting
    assert sink.taken == []
    assert store.live.followed_streams == 0


async def test_a_subscriber_at_the_last_seq_published_here_does_not_read_the_log(
    store: Any, monkeypatch: Any
) -> None:
    """An SSE client that has just read a run's history subscribes at its end: the store
    published every event of the stream up to that cursor, so there is nothing to read."""
    await store.append("s", [ev(i) for i in range(3)])
    reads = count_log_reads(store, monkeypatch)
    async with asyncio.timeout(10), contextlib.aclosing(store.subscribe_batches("s", 3)) as it:
        waiting = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert reads == []
        await store.append("s", [ev(3)])
        assert [e.seq for e in await waiting] == [4]
    # A cursor before the last event published reads what follows it.
    async with asyncio.timeout(10), contextlib.aclosing(store.subscribe_batches("s", 2)) as it:
        assert [e.seq for e in await anext(it)] == [3, 4]
    assert reads == [2]


async def test_a_stream_this_store_never_published_is_read_from_the_log(
    store_factory: Any, monkeypatch: Any
) -> None:
    """Events committed before a store opened (another process's, or before a restart) were
    never published by it: a subscriber at any cursor reads the log first."""
    writer = await store_factory()
    await writer.append("s", [ev(i) for i in range(3)])
    reader = await store_factory()
    await writer.append("s", [ev(3)])  # another process's commit the reader has not heard of
    reads = count_log_reads(reader, monkeypatch)
    async with asyncio.timeout(10), contextlib.aclosing(reader.subscribe_batches("s", 3)) as it:
        assert [e.seq for e in await anext(it)] == [4]
    assert reads[0] == 3


async def test_a_hub_that_forgot_its_streams_reads_the_log(store: Any, monkeypatch: Any) -> None:
    """The hub remembers a bounded number of streams, then forgets them all: a subscriber of
    a forgotten stream reads the log, as for one it never heard of."""
    monkeypatch.setattr(live, "LAST_SEQS", 2)
    await store.append("a", [ev(0)])
    await store.append("b", [ev(0)])
    assert store.live.published_up_to("a", 1)
    await store.append("c", [ev(0)])  # the third stream: the first two are forgotten
    assert not store.live.published_up_to("a", 1)
    assert store.live.published_up_to("c", 1)
    assert not store.live.published_up_to("c", 0)
    reads = count_log_reads(store, monkeypatch)
    async with asyncio.timeout(10), contextlib.aclosing(store.subscribe_batches("a", 1)) as it:
        waiting = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.05)
        assert reads == [1]
        await store.append("a", [ev(1)])
        assert [e.seq for e in await waiting] == [2]
