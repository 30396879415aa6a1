"""The contract every event store backend must pass.

Only the public interface is used here (append, append_many, read_stream, read_all, head,
last_seq, verify, close); the backend comes from the ``store_factory`` fixture in conftest.py.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from eventstore import (
    GENESIS_HASH,
    AppendRequest,
    ConcurrencyError,
    EventStoreError,
    NewEvent,
    RecordedEvent,
    StoreClosedError,
    canonical_bytes,
    chain_hash,
)

RFC3339_MS_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def ev(type_: str = "Happened", **data: Any) -> NewEvent:
    return NewEvent(type_, msgspec.json.encode(data))


async def read_everything(store: Any) -> list[RecordedEvent]:
    events: list[RecordedEvent] = []
    while batch := await store.read_all(events[-1].position if events else 0, 1000):
        events.extend(batch)
    return events


def assert_chain(events: list[RecordedEvent]) -> None:
    previous = GENESIS_HASH
    for event in events:
        canonical = canonical_bytes(
            event.position, event.stream, event.seq, event.type, event.data, event.created_at
        )
        assert event.hash == chain_hash(previous, canonical), event.position
        previous = event.hash


# -- append --------------------------------------------------------------------------------


async def test_append_returns_recorded_events(store: Any) -> None:
    first, second = ev("Created", title="t"), ev("Renamed", title="ü")
    recorded = await store.append("thread-1", [first, second], 0)

    assert [(e.position, e.stream, e.seq, e.type) for e in recorded] == [
        (1, "thread-1", 1, "Created"),
        (2, "thread-1", 2, "Renamed"),
    ]
    assert [e.data.encode() for e in recorded] == [first.data, second.data]
    for event in recorded:
        assert re.fullmatch(r"[0-9a-f]{64}", event.hash)
    assert recorded[0].hash != recorded[1].hash
    assert_chain(recorded)
    assert await store.read_stream("thread-1") == recorded
    assert await store.read_all() == recorded


async def test_created_at_is_rfc3339_utc_with_milliseconds(store: Any) -> None:
    before = datetime.now(UTC)
    [event] = await store.append("s", [ev()])
    after = datetime.now(UTC)

    assert RFC3339_MS_UTC.fullmatch(event.created_at), event.created_at
    stamp = datetime.fromisoformat(event.created_at)
    assert stamp.utcoffset() == timedelta(0)
    # Truncated to milliseconds, so it may be up to 1 ms before ``before``.
    assert before - timedelta(milliseconds=1) <= stamp <= after


async def test_positions_continue_across_streams(store: Any) -> None:
    await store.append("a", [ev(), ev()], 0)
    recorded = await store.append("b", [ev()], 0)
    more = await store.append("a", [ev()], 2)

    assert (recorded[0].position, recorded[0].seq) == (3, 1)
    assert (more[0].position, more[0].seq) == (4, 3)
    assert_chain(await read_everything(store))


async def test_expected_seq_mismatch_raises_and_writes_nothing(store: Any) -> None:
    await store.append("s", [ev(n=1), ev(n=2)], 0)
    head = await store.head()

    with pytest.raises(ConcurrencyError) as info:
        await store.append("s", [ev(n=3)], 5)

    assert (info.value.stream, info.value.expected_seq, info.value.actual_seq) == ("s", 5, 2)
    assert await store.head() == head
    assert await store.last_seq("s") == 2
    assert len(await store.read_stream("s")) == 2
    # Nothing was consumed by the failed append: the next one takes the next position.
    [next_event] = await store.append("s", [ev(n=3)], 2)
    assert (next_event.position, next_event.seq) == (head + 1, 3)


async def test_expected_seq_zero_on_existing_stream_fails(store: Any) -> None:
    await store.append("s", [ev()], 0)

    with pytest.raises(ConcurrencyError):
        await store.append("s", [ev()], 0)

    assert await store.last_seq("s") == 1
    assert await store.head() == 1


async def test_expected_seq_zero_on_a_stream_this_store_never_wrote_fails_alone(
    store_factory: Any,
) -> None:
    """The writer takes a stream it knows nothing of, expected to be new, to be new without
    asking the database; one that is not is still refused, and only its own append."""
    first = await store_factory()
    await first.append("old", [ev(), ev()], 0)
    await first.close()
    store = await store_factory()  # knows nothing of "old"

    results = await asyncio.gather(
        store.append("new-1", [ev()], 0),
        store.append("old", [ev(n=3)], 0),
        store.append("new-2", [ev(), ev()], 0),
        return_exceptions=True,
    )

    assert isinstance(results[1], ConcurrencyError)
    assert (results[1].expected_seq, results[1].actual_seq) == (0, 2)
    assert [[(e.stream, e.seq) for e in r] for r in (results[0], results[2])] == [
        [("new-1", 1)],
        [("new-2", 1), ("new-2", 2)],
    ]
    assert await store.last_seq("old") == 2
    everything = await read_everything(store)
    assert [e.position for e in everything] == [1, 2, 3, 4, 5]
    assert_chain(everything)


async def test_expected_seq_on_missing_stream_fails(store: Any) -> None:
    with pytest.raises(ConcurrencyError):
        await store.append("nobody", [ev()], 1)

    assert await store.head() == 0
    assert await store.read_stream("nobody") == []


async def test_expected_seq_none_appends_anyway(store: Any) -> None:
    await store.append("s", [ev(), ev()], None)
    recorded = await store.append("s", [ev()], None)
    also = await store.append("s", [ev()])

    assert [recorded[0].seq, also[0].seq] == [3, 4]


async def test_data_is_stored_byte_for_byte(store: Any) -> None:
    # Not what msgspec would produce: spaces, escapes, a raw non-ASCII character, 2.50 and
    # 1e3. The store must neither re-encode nor normalise the JSON it was given.
    payloads = [
        b'{"a": "\\u00e9 \xc3\xa9 \\n", "b" : [1, 2.50, 1e3], "c": null}',
        msgspec.json.encode({"emoji": "\U0001f600", "zh": "中文", "nul": "\x00", "q": '"'}),
        b"[]",
        b'"just a string"',
    ]
    recorded = await store.append("s", [NewEvent("T", p) for p in payloads])

    for events in (recorded, await store.read_stream("s"), await store.read_all()):
        assert [e.data.encode("utf-8") for e in events] == payloads


async def test_raw_control_characters_and_backslashes_are_stored_unchanged(store: Any) -> None:
    # Not valid JSON, but the store keeps whatever UTF-8 it is given: raw tab, newline, CR
    # and backslashes (which a bulk-load text format must escape), in data, stream and type.
    stream, type_ = "s\tt\\n", "T\r\n"
    payloads = [b'{"a":"x\ty\nz\r\\"}', b'"\\\\N"', b"\\.\n"]
    recorded = await store.append(stream, [NewEvent(type_, p) for p in payloads], 0)

    for events in (recorded, await store.read_stream(stream), await store.read_all()):
        assert [(e.stream, e.type, e.data.encode()) for e in events] == [
            (stream, type_, p) for p in payloads
        ]
    assert (await store.verify()).ok


# -- append_many ---------------------------------------------------------------------------


async def test_append_many_writes_every_stream_in_one_go(store: Any) -> None:
    await store.append("run-1", [ev()], 0)

    recorded = await store.append_many(
        [
            AppendRequest("thread-1", [ev("RunStarted"), ev("Note")], 0),
            AppendRequest("run-1", [ev("Started")], 1),
            AppendRequest("thread-1", [ev("Third")], 2),
        ]
    )

    assert [(e.position, e.stream, e.seq) for e in recorded] == [
        (2, "thread-1", 1),
        (3, "thread-1", 2),
        (4, "run-1", 2),
        (5, "thread-1", 3),
    ]
    assert_chain(await read_everything(store))


async def test_append_many_is_atomic_across_streams(store: Any) -> None:
    await store.append("c", [ev(), ev()], 0)
    head = await store.head()

    with pytest.raises(ConcurrencyError) as info:
        await store.append_many(
            [
                AppendRequest("a", [ev()], 0),
                AppendRequest("b", [ev(), ev()], 0),
                AppendRequest("c", [ev()], 1),  # wrong: c is at 2
            ]
        )

    assert info.value.stream == "c"
    assert await store.head() == head
    assert await store.read_stream("a") == []
    assert await store.read_stream("b") == []
    assert await store.last_seq("c") == 2
    # No partial positions were used up.
    [next_event] = await store.append("a", [ev()], 0)
    assert next_event.position == head + 1
    assert [e.position for e in await read_everything(store)] == list(range(1, head + 2))


async def test_conflict_does_not_fail_neighbours_in_the_same_batch(store: Any) -> None:
    await store.append("busy", [ev(), ev(), ev()], 0)
    bad = 17

    results = await asyncio.gather(
        *(
            store.append(f"s{i}", [ev(i=i)], 0) if i != bad else store.append("busy", [ev()], 1)
            for i in range(50)
        ),
        return_exceptions=True,
    )

    assert isinstance(results[bad], ConcurrencyError)
    good = [r for i, r in enumerate(results) if i != bad]
    assert all(isinstance(r, list) and len(r) == 1 for r in good)
    assert sorted(r[0].position for r in good) == list(range(4, 4 + 49))
    assert await store.last_seq("busy") == 3
    everything = await read_everything(store)
    assert [e.position for e in everything] == list(range(1, 53))
    assert_chain(everything)


async def test_concurrent_appends_with_same_expected_seq_one_wins(store: Any) -> None:
    results = await asyncio.gather(
        *(store.append("s", [ev(i=i)], 0) for i in range(10)), return_exceptions=True
    )

    winners = [r for r in results if isinstance(r, list)]
    losers = [r for r in results if isinstance(r, ConcurrencyError)]
    assert len(winners) == 1
    assert len(losers) == 9
    assert await store.read_stream("s") == winners[0]


# -- reads ---------------------------------------------------------------------------------


async def test_read_all_limits_and_cursors(store: Any) -> None:
    for i in range(25):
        await store.append("a" if i % 3 else "b", [ev(i=i)])

    assert [e.position for e in await store.read_all(0, 10)] == list(range(1, 11))
    assert [e.position for e in await store.read_all(10, 10)] == list(range(11, 21))
    assert [e.position for e in await store.read_all(20, 10)] == list(range(21, 26))
    assert await store.read_all(25, 10) == []
    assert await store.read_all(1000) == []
    assert [e.position for e in await store.read_all(7, 1)] == [8]
    assert [msgspec.json.decode(e.data)["i"] for e in await read_everything(store)] == list(
        range(25)
    )


async def test_read_stream_limits_and_cursors(store: Any) -> None:
    for i in range(20):
        await store.append("a" if i % 2 else "b", [ev(i=i)])

    page = await store.read_stream("a", 3, 4)
    assert [e.seq for e in page] == [4, 5, 6, 7]
    assert all(e.stream == "a" for e in page)
    assert [e.seq for e in await store.read_stream("a", 7, 100)] == [8, 9, 10]
    assert await store.read_stream("a", 10) == []
    assert await store.read_stream("missing") == []
    seqs: list[int] = []
    while batch := await store.read_stream("b", seqs[-1] if seqs else 0, 3):
        seqs.extend(e.seq for e in batch)
    assert seqs == list(range(1, 11))


async def test_read_stream_wire_gives_the_stored_texts_as_bytes(store: Any) -> None:
    await store.append("a", [ev("Said", text='é "quoted"\n\\ 😀'), ev("Other", n=1)])
    await store.append("b", [ev()])
    await store.append("a", [ev("Third")])

    events = await store.read_stream("a", 0)
    rows = await store.read_stream_wire("a", 0)
    assert rows == [
        (b"%d" % e.seq, e.type.encode(), e.data.encode(), e.created_at.encode()) for e in events
    ]
    assert all(type(part) is bytes for row in rows for part in row)
    assert await store.read_stream_wire("a", 1, 1) == rows[1:2]
    assert await store.read_stream_wire("a", 3) == []
    assert await store.read_stream_wire("missing") == []


async def test_head_and_last_seq(store: Any) -> None:
    assert await store.head() == 0
    assert await store.last_seq("a") == 0

    await store.append("a", [ev(), ev(), ev()])
    await store.append("b", [ev()])

    assert await store.head() == 4
    assert await store.last_seq("a") == 3
    assert await store.last_seq("b") == 1
    assert await store.last_seq("c") == 0


# -- verify, close, reopen -----------------------------------------------------------------


async def test_verify_on_empty_and_filled_log(store: Any) -> None:
    empty = await store.verify()
    assert empty.ok
    assert (empty.events, empty.head_position) == (0, 0)

    await store.append_many([AppendRequest("a", [ev()] * 3), AppendRequest("b", [ev()] * 2)])
    report = await store.verify()

    assert report.ok
    assert report.first_bad_position is None
    assert (report.events, report.streams, report.head_position) == (5, 2, 5)
    assert report.head_hash == (await store.read_all())[-1].hash


async def test_closed_store_raises_store_closed_error(store: Any) -> None:
    await store.append("s", [ev()])
    await store.close()
    await store.close()  # idempotent

    with pytest.raises(StoreClosedError):
        await store.append("s", [ev()])
    with pytest.raises(StoreClosedError):
        await store.append_many([AppendRequest("s", [ev()])])
    with pytest.raises(StoreClosedError):
        await store.read_stream("s")
    with pytest.raises(StoreClosedError):
        await store.read_all()
    with pytest.raises(StoreClosedError):
        await store.head()
    with pytest.raises(StoreClosedError):
        await store.last_seq("s")


async def test_close_commits_appends_already_queued(store_factory: Any) -> None:
    store = await store_factory()

    *results, _ = await asyncio.gather(
        *(store.append(f"s{i}", [ev(i=i)], 0) for i in range(10)), store.close()
    )

    assert all(len(r) == 1 for r in results)
    reopened = await store_factory()
    assert await reopened.head() == 10
    assert (await reopened.verify()).ok


async def test_reopen_sees_the_same_log_and_continues_it(store_factory: Any) -> None:
    store = await store_factory()
    written = await store.append("s", [ev(i=i) for i in range(5)], 0)
    await store.close()

    reopened = await store_factory()
    assert await reopened.read_all() == written
    [more] = await reopened.append("s", [ev()], 5)
    assert (more.position, more.seq) == (6, 6)
    assert (await reopened.verify()).ok


async def test_closed_store_refuses_verify_and_subscribe(store: Any) -> None:
    await store.close()

    with pytest.raises(StoreClosedError):
        await store.verify()
    with pytest.raises(StoreClosedError):
        await anext(store.subscribe("s", 0))


# -- malformed input -----------------------------------------------------------------------


async def test_invalid_utf8_fails_only_its_own_append(store: Any) -> None:
    results = await asyncio.gather(
        store.append("a", [ev()]),
        store.append("b", [NewEvent("T", b'{"x":"\xff"}')]),
        store.append("c", [ev()]),
        return_exceptions=True,
    )

    assert isinstance(results[1], EventStoreError)
    assert [r[0].position for r in (results[0], results[2])] == [1, 2]
    assert await store.read_stream("b") == []


async def test_malformed_event_fails_only_its_own_append(store: Any) -> None:
    results = await asyncio.gather(
        store.append("a", [ev()]),
        store.append("b", [NewEvent("T", '{"not": "bytes"}')]),  # type: ignore[arg-type]
        store.append("c", [ev()]),
        return_exceptions=True,
    )

    assert isinstance(results[1], EventStoreError)
    assert not isinstance(results[0], BaseException)
    assert not isinstance(results[2], BaseException)
    assert await store.head() == 2
