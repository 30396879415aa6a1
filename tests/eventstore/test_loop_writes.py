"""Small batches on SQLite are written from the event loop and committed on the writer thread.

The statements of a batch run where the loop runs; only its commit (the write to disk and the
fsync) runs on the writer thread. A batch that would wait for another connection's write lock,
one after another connection's commit (which may have to be caught up with) and one larger than
``_loop_batch_events`` are written on the writer thread whole. These tests watch which thread
runs each statement of the store's write connection (SQLite's trace callback runs on the
thread that executes the statement).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from eventstore import AppendRequest, NewEvent, SQLiteEventStore, StorageError, StoreClosedError
from eventstore.sql import SqliteDatabase
from eventstore.writer import BatchWriter

WRITER_THREAD = "runlog-writer"


class Statements:
    """(thread name, statement) of every statement the store's write connection runs."""

    def __init__(self, store: SQLiteEventStore) -> None:
        db = store._write_db
        assert isinstance(db, SqliteDatabase)
        self.seen: list[tuple[str, str]] = []
        db.conn.set_trace_callback(self._note)

    def _note(self, statement: str) -> None:
        self.seen.append((threading.current_thread().name, statement))

    def threads_of(self, prefix: str) -> set[str]:
        return {name for name, sql in self.seen if sql.startswith(prefix)}

    def clear(self) -> None:
        self.seen.clear()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    store = await SQLiteEventStore.open(str(tmp_path / "events.db"))
    try:
        # The writer knows the head once it has committed a batch of its own.
        await store.append("warm-up", [NewEvent("T", b"{}")])
        yield store
    finally:
        await store.close()


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection to the file, as another process would have."""
    conn = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def events(n: int) -> list[NewEvent]:
    return [NewEvent("T", b'{"i": %d}' % i) for i in range(n)]


async def test_a_small_batch_is_written_on_the_loop_and_committed_on_the_writer_thread(
    store: SQLiteEventStore,
) -> None:
    statements = Statements(store)
    loop_thread = threading.current_thread().name

    recorded = await store.append("s", events(3))

    assert [e.seq for e in recorded] == [1, 2, 3]
    assert statements.threads_of("BEGIN IMMEDIATE") == {loop_thread}
    assert statements.threads_of("INSERT INTO events") == {loop_thread}
    assert statements.threads_of("COMMIT") == {WRITER_THREAD}
    assert await store.read_stream("s") == recorded
    assert (await store.verify()).ok


async def test_a_batch_larger_than_the_bound_is_written_on_the_writer_thread(
    store: SQLiteEventStore,
) -> None:
    statements = Statements(store)

    recorded = await store.append("big", events(store._loop_batch_events + 1))

    assert len(recorded) == store._loop_batch_events + 1
    assert statements.threads_of("INSERT INTO events") == {WRITER_THREAD}
    assert statements.threads_of("COMMIT") == {WRITER_THREAD}


async def test_a_batch_that_would_wait_for_the_write_lock_waits_on_the_writer_thread(
    store: SQLiteEventStore, raw: sqlite3.Connection
) -> None:
    statements = Statements(store)
    raw.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
    appending = asyncio.ensure_future(store.append("s", events(1)))
    ticks = 0
    for _ in range(20):  # the loop goes on meanwhile
        await asyncio.sleep(0.01)
        ticks += 1
    assert not appending.done()
    raw.execute("COMMIT")

    [event] = await appending

    assert ticks == 20
    assert event.seq == 1
    assert statements.threads_of("INSERT INTO events") == {WRITER_THREAD}
    # The loop's attempt gave up at once, having begun nothing; the thread's waited.
    assert statements.threads_of("BEGIN IMMEDIATE") == {
        threading.current_thread().name,
        WRITER_THREAD,
    }
    statements.clear()
    await store.append("s", events(1))
    assert statements.threads_of("INSERT INTO events") == {threading.current_thread().name}


async def test_a_batch_after_another_connections_commit_goes_to_the_writer_thread(
    store: SQLiteEventStore, raw: sqlite3.Connection
) -> None:
    last = (await store.read_all(0, 10))[-1]
    # Another process's writer on the same file.
    BatchWriter(SqliteDatabase(raw), ()).commit_batch(
        [[AppendRequest("other", events(2))]], "2026-12-01T00:00:00Z"
    )
    statements = Statements(store)

    [event] = await store.append("s", events(1))

    assert event.position == last.position + 3
    assert statements.threads_of("INSERT INTO events") == {WRITER_THREAD}
    assert (await store.verify()).ok
    # Caught up: the next batch is the loop's again.
    statements.clear()
    for _ in range(20):  # the writer thread keeps a few batches after another writer
        await store.append("s", events(1))
    assert threading.current_thread().name in statements.threads_of("INSERT INTO events")


async def test_a_failed_commit_fails_its_appends_and_leaves_nothing_behind(
    store: SQLiteEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = store._write_db
    assert isinstance(db, SqliteDatabase)
    real_commit = db.commit
    calls: list[str] = []

    def failing_commit() -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        real_commit()

    monkeypatch.setattr(db, "commit", failing_commit)
    head = (await store.read_all(0, 100))[-1].position

    with pytest.raises(StorageError, match="disk I/O error"):
        await store.append("s", events(2))

    assert calls == [WRITER_THREAD]
    assert not db.in_transaction
    assert await store.read_stream("s") == []
    [event] = await store.append("s", events(1))
    assert (event.seq, event.position) == (1, head + 1)
    assert (await store.verify()).ok


async def test_a_stream_expected_to_be_new_costs_no_query(store: SQLiteEventStore) -> None:
    statements = Statements(store)

    await store.append("brand-new", events(1), 0)
    await store.append("any-seq", events(1), None)

    lookups = [sql for _, sql in statements.seen if sql.startswith("SELECT seq FROM events")]
    assert lookups == ["SELECT seq FROM events WHERE stream = 'any-seq' ORDER BY seq DESC LIMIT 1"]


async def test_the_loops_batches_set_the_lock_wait_off_once_not_per_batch(
    store: SQLiteEventStore,
) -> None:
    statements = Statements(store)

    for i in range(10):
        await store.append("s", events(1), i)

    assert statements.threads_of("INSERT INTO events") == {threading.current_thread().name}
    pragmas = [sql for _, sql in statements.seen if sql.startswith("PRAGMA busy_timeout")]
    assert pragmas == ["PRAGMA busy_timeout = 0"]


async def test_a_probe_waits_its_turn_with_the_batches(store: SQLiteEventStore) -> None:
    """A probe of the database goes through the writer's queue: it never runs on the writer
    thread while a batch written from the loop holds the connection's transaction."""
    statements = Statements(store)
    store.write_fault = "the disk was full"  # as after a failed commit

    results = await asyncio.gather(
        store.append("a", events(2)),
        store.check_writable(),
        store.append("b", events(2)),
    )

    assert results[1] is None  # the probe committed: the fault is over
    transactions: list[list[str]] = []
    for _, sql in statements.seen:
        if sql.startswith("PRAGMA busy_timeout"):
            continue  # set between transactions
        if sql.startswith("BEGIN"):
            transactions.append([])
        if transactions:
            transactions[-1].append(sql)
    # Each transaction ends before the next begins, the probe's among them.
    assert all(t[-1] == "COMMIT" and t.count("COMMIT") == 1 for t in transactions)
    assert any("PRAGMA user_version" in " ".join(t) for t in transactions)
    assert [e.stream for e in await store.read_all(1, 10)] == ["a", "a", "b", "b"]


async def test_a_probe_queued_behind_a_failed_batch_still_answers(
    store: SQLiteEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer takes a probe off the queue with the batch before it; the batch's failure
    must not lose it (``check_writable`` would wait for ever)."""
    db = store._write_db
    assert isinstance(db, SqliteDatabase)
    real_commit = db.commit
    failed: list[bool] = []

    def failing_commit() -> None:
        if not failed:
            failed.append(True)
            raise sqlite3.OperationalError("disk I/O error")
        real_commit()

    monkeypatch.setattr(db, "commit", failing_commit)
    store.write_fault = "the disk was full"  # as after a failed commit

    async with asyncio.timeout(10):
        appended, probed = await asyncio.gather(
            store.append("a", events(2)), store.check_writable(), return_exceptions=True
        )

    assert isinstance(appended, StorageError)
    assert probed is None  # the probe ran after the failed batch, and committed
    assert store.write_fault is None


async def test_without_wal_every_batch_is_written_on_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside WAL mode a commit may wait for readers, and the loop's batches commit with no
    wait set: a store whose file is not in WAL mode writes every batch on the thread."""
    import eventstore.sqlite

    def rollback_journal(path: str, synchronous: str = "FULL") -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = DELETE")  # as where WAL cannot be had
        return conn

    monkeypatch.setattr(eventstore.sqlite, "connect", rollback_journal)
    store = await SQLiteEventStore.open(str(tmp_path / "events.db"))
    try:
        assert store._loop_batch_events == 0
        assert SQLiteEventStore._loop_batch_events > 0  # the class's bound is untouched
        await store.append("warm-up", events(1))
        statements = Statements(store)
        await store.append("s", events(2), 0)
        assert statements.threads_of("INSERT INTO events") == {WRITER_THREAD}
    finally:
        await store.close()


async def cancel_the_writer_task_once_it_inserted(
    store: SQLiteEventStore, statements: Statements
) -> None:
    """Wait until a batch's rows are inserted (its commit still to come), then cancel the
    store's writer task."""
    for _ in range(500):
        if statements.threads_of("INSERT INTO events"):
            break
        await asyncio.sleep(0.01)
    writer_task = store._writer_task
    assert writer_task is not None
    writer_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer_task
    store._writer_task = None  # gone; close() must not wait for it


async def test_a_batch_written_from_the_loop_is_committed_even_if_the_writer_task_is_cancelled(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    """Once a batch is written, its commit is handed to the thread to run whatever becomes of
    the task that wrote it: the connection is never left inside the transaction."""
    statements = Statements(store)
    release = threading.Event()
    blocker = store._thread.call(release.wait, 10)  # the commit will queue behind this
    appending = asyncio.ensure_future(store.append("s", events(2), 0))
    await cancel_the_writer_task_once_it_inserted(store, statements)
    assert statements.threads_of("INSERT INTO events") == {threading.current_thread().name}
    release.set()
    await blocker
    await store._thread.call(lambda: None)  # the commit ran before this

    with pytest.raises(StorageError):
        await appending  # its task was cancelled: the caller is not told it committed
    db = store._write_db
    assert isinstance(db, SqliteDatabase)
    assert not db.in_transaction
    assert statements.threads_of("COMMIT") == {WRITER_THREAD}
    conn = sqlite3.connect(tmp_path / "events.db")
    try:
        assert conn.execute("SELECT count(*) FROM events WHERE stream = 's'").fetchone() == (2,)
    finally:
        conn.close()


async def test_a_probe_taken_with_a_batch_is_told_when_the_writer_task_is_cancelled(
    store: SQLiteEventStore,
) -> None:
    """The writer task took the probe off the queue with the batch; if the task is cancelled
    before it gets to the probe, ``check_writable`` hears so instead of waiting for ever."""
    statements = Statements(store)
    store.write_fault = "the disk was full"
    release = threading.Event()
    blocker = store._thread.call(release.wait, 10)  # the batch's commit queues behind this
    appending = asyncio.ensure_future(store.append("s", events(2), 0))
    probing = asyncio.ensure_future(store.check_writable())
    await cancel_the_writer_task_once_it_inserted(store, statements)
    release.set()
    await blocker

    async with asyncio.timeout(10):
        with pytest.raises(StoreClosedError):
            await probing
        with pytest.raises(StorageError):
            await appending
