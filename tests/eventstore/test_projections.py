"""Projections are applied inside the append transaction and keep their checkpoint there."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import threading
from pathlib import Path

import msgspec
import pytest

from eventstore import (
    AppendRequest,
    NewEvent,
    Projection,
    RecordedEvent,
    SQLiteEventStore,
    StorageError,
)


class TypeCounts:
    """Counts events per type in its own table; blows up on ``poison`` events if asked to."""

    tables = ("test_type_counts",)

    def __init__(self, name: str = "test_type_counts", poison: str | None = None) -> None:
        self.name = name
        self.poison = poison
        self.seen: list[RecordedEvent] = []

    def create(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS test_type_counts (type TEXT PRIMARY KEY, n INTEGER)"
        )

    def apply(self, conn: sqlite3.Connection, event: RecordedEvent) -> None:
        conn.execute(
            "INSERT INTO test_type_counts (type, n) VALUES (?, 1)"
            " ON CONFLICT (type) DO UPDATE SET n = n + 1",
            (event.type,),
        )
        if event.type == self.poison:
            # After writing: the failed append must roll the projection's rows back too.
            raise RuntimeError("projection cannot handle this event")
        self.seen.append(event)


def ev(type_: str, i: int = 0) -> NewEvent:
    return NewEvent(type_, msgspec.json.encode({"i": i}))


async def counts(store: SQLiteEventStore) -> dict[str, int]:
    return dict(await store.fetch_all("SELECT type, n FROM test_type_counts"))


async def checkpoint(store: SQLiteEventStore, name: str = "test_type_counts") -> int | None:
    row = await store.fetch_one(
        "SELECT position FROM projection_checkpoints WHERE name = ?", (name,)
    )
    return None if row is None else int(row[0])


async def open_with(db_path: Path, *projections: Projection) -> SQLiteEventStore:
    return await SQLiteEventStore.open(str(db_path), projections)


class CreatedOnly(TypeCounts):
    """A projection that names the only event type it uses."""

    event_types = frozenset({"Created"})


def test_type_counts_is_a_projection() -> None:
    assert isinstance(TypeCounts(), Projection)
    assert isinstance(CreatedOnly(), Projection)


async def test_a_projection_with_event_types_sees_those_types_only(db_path: Path) -> None:
    """The writer applies an event to the projections whose ``event_types`` name its type,
    and to every projection without ``event_types``, in their order; the checkpoints of all
    move with the head."""
    only, every = CreatedOnly(name="created_only"), TypeCounts(name="every")
    store = await open_with(db_path, only, every)
    try:
        await store.append("a", [ev("Created"), ev("Renamed")], 0)
        await store.append_many(
            [AppendRequest("b", [ev("Renamed"), ev("Created")], 0), AppendRequest("c", [ev("X")])]
        )
        logged = await store.read_all()
        assert [e.type for e in only.seen] == ["Created", "Created"]
        assert only.seen == [e for e in logged if e.type == "Created"]
        assert every.seen == logged
        head = await store.head()
        assert await checkpoint(store, "created_only") == await checkpoint(store, "every") == head
    finally:
        await store.close()


async def test_projection_rows_are_visible_when_append_returns(db_path: Path) -> None:
    projection = TypeCounts()
    store = await open_with(db_path, projection)
    try:
        assert await counts(store) == {}
        assert await checkpoint(store) == 0

        await store.append("a", [ev("Created"), ev("Renamed")], 0)
        assert await counts(store) == {"Created": 1, "Renamed": 1}
        assert await checkpoint(store) == 2

        await store.append("b", [ev("Created")], 0)
        assert await counts(store) == {"Created": 2, "Renamed": 1}
        assert await checkpoint(store) == await store.head() == 3
        assert projection.seen == await store.read_all()
    finally:
        await store.close()


async def test_checkpoint_equals_head_after_concurrent_appends(db_path: Path) -> None:
    store = await open_with(db_path, TypeCounts(), TypeCounts(name="second"))
    try:
        await asyncio.gather(*(store.append(f"s{i % 7}", [ev(f"T{i % 3}", i)]) for i in range(60)))

        head = await store.head()
        assert head == 60
        assert await checkpoint(store) == head
        assert await checkpoint(store, "second") == head
        # Both instances write the same table: every event is counted twice.
        assert await counts(store) == {"T0": 40, "T1": 40, "T2": 40}
    finally:
        await store.close()


async def test_failing_projection_fails_only_its_own_append(db_path: Path) -> None:
    store = await open_with(db_path, TypeCounts(poison="Poison"))
    try:
        await store.append("a", [ev("Created")], 0)
        head = await store.head()

        results = await asyncio.gather(
            store.append("b", [ev("Fine", 1)], 0),
            store.append("a", [ev("Renamed"), ev("Poison")], 1),
            store.append("c", [ev("Fine", 2)], 0),
            return_exceptions=True,
        )

        assert isinstance(results[1], StorageError)
        assert not isinstance(results[0], BaseException)
        assert not isinstance(results[2], BaseException)
        assert [e.position for e in results[0] + results[2]] == [head + 1, head + 2]
        assert await store.last_seq("a") == 1  # neither event of the failed append
        assert await store.head() == head + 2
        assert await counts(store) == {"Created": 1, "Fine": 2}
        assert await checkpoint(store) == head + 2
        assert (await store.verify()).ok
    finally:
        await store.close()


async def test_failing_projection_alone_writes_nothing(db_path: Path) -> None:
    store = await open_with(db_path, TypeCounts(poison="Poison"))
    try:
        await store.append("a", [ev("Created")], 0)

        with pytest.raises(StorageError):
            await store.append("a", [ev("Poison")], 1)

        assert await store.head() == 1
        assert await counts(store) == {"Created": 1}
        assert await checkpoint(store) == 1
        [after] = await store.append("a", [ev("Renamed")], 1)
        assert after.position == 2
    finally:
        await store.close()


async def test_projection_registered_later_catches_up_on_open(db_path: Path) -> None:
    store = await open_with(db_path)
    for i in range(25):
        await store.append(f"s{i % 4}", [ev(f"T{i % 2}", i)])
    await store.close()

    late = TypeCounts()
    store = await open_with(db_path, late)
    try:
        assert await counts(store) == {"T0": 13, "T1": 12}
        assert await checkpoint(store) == await store.head() == 25
        assert late.seen == await store.read_all()
        await store.append("s0", [ev("T0")])
        assert await counts(store) == {"T0": 14, "T1": 12}
        assert await checkpoint(store) == 26
    finally:
        await store.close()

    # Reopening with the same projection does not apply anything twice.
    again = TypeCounts()
    store = await open_with(db_path, again)
    try:
        assert await counts(store) == {"T0": 14, "T1": 12}
        assert again.seen == []
    finally:
        await store.close()


async def test_events_of_a_process_without_the_projection_are_caught_up_by_the_next_batch(
    db_path: Path, child_writer_cmd: list[str], child_env: dict[str, str]
) -> None:
    projection = TypeCounts()
    store = await open_with(db_path, projection)
    try:
        await store.append("mine", [ev("Mine")], 0)

        child = await asyncio.to_thread(
            subprocess.run,
            [*child_writer_cmd, str(db_path), "--stream", "theirs", "--count", "20"],
            env=child_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert child.returncode == 0, child.stderr
        assert await store.head() == 21
        assert await counts(store) == {"Mine": 1}  # not seen yet
        assert await checkpoint(store) == 1

        await store.append("mine", [ev("Mine")], 1)

        assert await counts(store) == {"Mine": 2, "ChildWrote": 20}
        assert await checkpoint(store) == await store.head() == 22
        assert [e.position for e in projection.seen] == list(range(1, 23))
    finally:
        await store.close()


async def test_projection_failing_on_open_raises_storage_error_and_cleans_up(
    db_path: Path,
) -> None:
    store = await open_with(db_path)
    await store.append("a", [ev("Poison")])
    await store.close()

    def writer_threads() -> int:
        return sum(t.name.startswith("runlog-writer") for t in threading.enumerate())

    before = writer_threads()
    with pytest.raises(StorageError):
        await open_with(db_path, TypeCounts(poison="Poison"))
    assert writer_threads() == before
