"""Two PostgreSQL stores on one database (as two processes would have): what one appends
reaches the other's live subscribers and watchers once each, in order, also after the
listening connection was killed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import psycopg
import pytest

from eventstore import NewEvent, RecordedEvent
from eventstore.pg_listen import APPLICATION_NAME
from eventstore.postgres import PostgresEventStore
from tests.postgres import fresh_schema


@pytest.fixture
async def two_stores(pg_url: str) -> AsyncIterator[tuple[PostgresEventStore, PostgresEventStore]]:
    url = fresh_schema(pg_url)
    a = await PostgresEventStore.open(url)
    b = await PostgresEventStore.open(url)
    try:
        async with asyncio.timeout(10):
            await a.listener.listening.wait()
            await b.listener.listening.wait()
        yield a, b
    finally:
        await a.close()
        await b.close()


async def collect(store: PostgresEventStore, stream: str, count: int) -> list[RecordedEvent]:
    received: list[RecordedEvent] = []
    async with contextlib.aclosing(store.subscribe(stream, 0)) as events:
        async for event in events:
            received.append(event)
            if len(received) == count:
                break
    return received


async def append_each(store: PostgresEventStore, stream: str, count: int, tag: str) -> None:
    async def one(i: int) -> None:
        await store.append(stream, [NewEvent(tag, b'{"i":%d}' % i)])

    # Concurrent appends: several group-commit batches, interleaved with the other store's.
    for start in range(0, count, 25):
        await asyncio.gather(*(one(i) for i in range(start, min(start + 25, count))))


async def test_events_appended_through_one_store_reach_the_others_subscribers_once_in_order(
    two_stores: tuple[PostgresEventStore, PostgresEventStore],
) -> None:
    a, b = two_stores
    watched: list[int] = []

    def watch(events: Sequence[RecordedEvent]) -> None:
        watched.extend(event.position for event in events)

    stop = b.live.watch(watch)
    try:
        subscriber = asyncio.create_task(collect(b, "shared", 400))
        await asyncio.sleep(0.05)  # the subscriber is waiting live, not catching up
        async with asyncio.timeout(60):
            await asyncio.gather(
                append_each(a, "shared", 200, "FromA"), append_each(b, "shared", 200, "FromB")
            )
            received = await subscriber
    finally:
        stop()
    assert [event.seq for event in received] == list(range(1, 401))
    assert {event.type for event in received} == {"FromA", "FromB"}
    # Each event of the log went to B's watchers once, in position order: A's (read from
    # the log after a notification) and B's own (published as they committed).
    assert watched == list(range(1, 401))
    assert received == await b.read_stream("shared", 0, 1000)


async def test_a_killed_listening_connection_reconnects_and_nothing_is_missed(
    two_stores: tuple[PostgresEventStore, PostgresEventStore],
) -> None:
    a, b = two_stores
    resyncs: list[int] = []
    b.reconnect_observers.append(lambda: resyncs.append(b.listener.reconnects))
    subscriber = asyncio.create_task(collect(b, "run", 150))
    await append_each(a, "run", 50, "Before")
    pid = b.listener.pid
    assert pid is not None
    with psycopg.connect(a.url, autocommit=True) as admin:
        [(name,)] = admin.execute(
            "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchall()
        assert name == APPLICATION_NAME
        # Wait until the backend is gone, then append while B cannot hear of it.
        [(killed,)] = admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchall()
    assert killed
    await append_each(a, "run", 50, "WhileLost")
    async with asyncio.timeout(30):
        while b.listener.reconnects == 0:
            await asyncio.sleep(0.01)
        await b.listener.listening.wait()
        await append_each(a, "run", 50, "After")
        received = await subscriber
    assert [event.seq for event in received] == list(range(1, 151))
    assert b.listener.pid not in (None, pid)
    assert b.listener.reconnects == 1
    async with asyncio.timeout(10):
        while not resyncs:
            await asyncio.sleep(0.01)
    assert resyncs == [1]


async def test_an_idle_store_reads_nothing(
    two_stores: tuple[PostgresEventStore, PostgresEventStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No timer: without a notification the listener never reads the log."""
    a, b = two_stores
    await a.append("s", [NewEvent("X", b"{}")])
    async with asyncio.timeout(10):
        while b._published < 1:
            await asyncio.sleep(0.01)
    reads: list[int] = []

    async def counting(position: int, limit: int) -> list[RecordedEvent]:
        reads.append(position)
        return await b.read_all(position, limit)

    monkeypatch.setattr(b.listener, "_read_after", counting)
    await asyncio.sleep(0.5)
    assert reads == []
    await a.append("s", [NewEvent("Y", b"{}")])
    async with asyncio.timeout(10):
        while b._published < 2:
            await asyncio.sleep(0.01)
    assert reads and reads[0] == 1


async def test_a_stores_own_commits_cost_the_listener_no_read(
    two_stores: tuple[PostgresEventStore, PostgresEventStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own commits are published by the writer path; their notifications need no read."""
    a, _ = two_stores
    reads: list[int] = []

    async def counting(position: int, limit: int) -> list[RecordedEvent]:
        reads.append(position)
        return await a.read_all(position, limit)

    monkeypatch.setattr(a.listener, "_read_after", counting)
    received = asyncio.create_task(collect(a, "own", 100))
    await asyncio.sleep(0.05)
    async with asyncio.timeout(30):
        await append_each(a, "own", 100, "Own")
        assert [event.seq for event in await received] == list(range(1, 101))
    await asyncio.sleep(0.2)  # the last notifications arrive
    # At least 4 commits (one per round of 25), each notified to the store itself.
    assert reads == []
