"""The SQLite event store: one file, WAL, one group-commit writer, separate readers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiosqlite
import structlog

from eventstore.errors import (
    EventStoreError,
    StorageError,
    StorageUnavailable,
    StoreClosedError,
)
from eventstore.live import LiveHub
from eventstore.model import AppendRequest, NewEvent, RecordedEvent, utc_now
from eventstore.projection import Projection
from eventstore.schema import EVENT_COLUMNS, connect
from eventstore.verify import VerifyReport, verify_connection
from eventstore.watch import FileWatch, touch
from eventstore.writer import BatchWriter, Outcome

__all__ = ["SQLiteEventStore", "open_store"]

log = structlog.get_logger("runlog.store")

#: Most append requests committed in one transaction.
MAX_BATCH = 1000
_STOP = object()


class _Pending:
    __slots__ = ("future", "requests")

    def __init__(self, requests: Sequence[AppendRequest], future: asyncio.Future[Any]) -> None:
        self.requests = requests
        self.future = future


class SQLiteEventStore:
    """The event store on a SQLite file.

    Open it with :meth:`open` inside a running event loop and close it with :meth:`close`.
    """

    def __init__(
        self,
        path: str,
        projections: Sequence[Projection] = (),
        *,
        synchronous: str = "FULL",
        readers: int = 2,
    ) -> None:
        self.path = path
        self.projections = tuple(projections)
        self._synchronous = synchronous
        self._reader_count = readers
        self._readers: list[aiosqlite.Connection] = []
        self._log_reader: sqlite3.Connection | None = None
        self._next_reader = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runlog-writer")
        self._write_conn: sqlite3.Connection | None = None
        self._writer: BatchWriter | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._closed = False
        self.live = LiveHub()
        # The last position handed to live subscribers: events after it are read from the log
        # and published when this process commits or the file changes (another process).
        self._published = 0
        self._watch = FileWatch(path + "-wal", self._publish_from_log)
        #: Why the last commit failed while the database could not write (disk full, I/O
        #: error); ``None`` once a commit succeeds again.
        self.write_fault: str | None = None

    # -- life cycle -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str,
        projections: Sequence[Projection] = (),
        *,
        synchronous: str = "FULL",
        readers: int = 2,
    ) -> SQLiteEventStore:
        store = cls(path, projections, synchronous=synchronous, readers=readers)
        await store._start()
        return store

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _create_private(self.path)
            self._write_conn = await loop.run_in_executor(
                self._executor, connect, self.path, self._synchronous
            )
            self._writer = BatchWriter(self._write_conn, self.projections)
            await loop.run_in_executor(self._executor, self._writer.create_schema)
            for _ in range(self._reader_count):
                reader = await aiosqlite.connect(self.path, isolation_level=None)
                await reader.execute("PRAGMA busy_timeout = 10000")
                await reader.execute("PRAGMA query_only = ON")
                self._readers.append(reader)
            self._log_reader = _inline_reader(self.path)
            row = self._log_reader.execute("SELECT coalesce(max(position), 0) FROM events")
            self._published = int(row.fetchone()[0])
        except BaseException as exc:
            await self._shutdown_connections()
            if isinstance(exc, EventStoreError) or not isinstance(exc, Exception):
                raise
            reason = str(exc) if isinstance(exc, sqlite3.Error) else repr(exc)
            if not _writable(self.path):
                reason = f"the location is read-only ({reason})"
            raise StorageError(f"cannot open the log at {self.path} for writing: {reason}") from exc
        self._writer_task = asyncio.create_task(self._run_writer(), name="runlog-writer")
        self._watch.start()

    async def close(self) -> None:
        """Commit what is queued, then close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._watch.stop()
        if self._writer_task is not None:
            self._queue.put_nowait(_STOP)
            await self._writer_task
        self.live.wake_all()
        await self._shutdown_connections()

    async def _shutdown_connections(self) -> None:
        for reader in self._readers:
            await reader.close()
        self._readers.clear()
        if self._log_reader is not None:
            self._log_reader.close()
            self._log_reader = None
        if self._write_conn is not None:
            conn = self._write_conn
            self._write_conn = None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> SQLiteEventStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- appends ----------------------------------------------------------------------------

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_seq: int | None = None
    ) -> list[RecordedEvent]:
        """Append ``events`` to ``stream`` if its last seq is ``expected_seq`` (None: any)."""
        return await self.append_many([AppendRequest(stream, list(events), expected_seq)])

    async def append_many(self, requests: Sequence[AppendRequest]) -> list[RecordedEvent]:
        """Append to several streams atomically: all requests commit, or none does."""
        if self._closed:
            raise StoreClosedError("the event store is closed")
        for request in requests:
            for event in request.events:
                if not isinstance(event.data, bytes):
                    raise StorageError(
                        f"event {event.type!r}: data must be encoded JSON bytes,"
                        f" not {type(event.data).__name__}"
                    )
        future: asyncio.Future[list[RecordedEvent]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(list(requests), future))
        return await future

    async def _run_writer(self) -> None:
        loop = asyncio.get_running_loop()
        writer = self._writer
        assert writer is not None
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch: list[_Pending] = [first]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            try:
                outcomes: list[Outcome] = await loop.run_in_executor(
                    self._executor,
                    writer.commit_batch,
                    [pending.requests for pending in batch],
                    utc_now(),
                )
            except BaseException as exc:
                error = exc if isinstance(exc, EventStoreError) else StorageError(repr(exc))
                if isinstance(error, StorageUnavailable):
                    self._fault(error)
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            committed: list[RecordedEvent] = []
            for pending, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, StorageUnavailable):
                    self._fault(outcome)
                if isinstance(outcome, EventStoreError):
                    if not pending.future.done():
                        pending.future.set_exception(outcome)
                else:
                    committed.extend(outcome)
                    if not pending.future.done():
                        pending.future.set_result(outcome)
            # Published only after the commit: a subscriber never sees an event that could
            # still be lost. Other processes' stores are told to look (eventstore/watch.py).
            if committed:
                self.write_fault = None
                touch(self.path + "-wal")
            self._publish(committed)
        # Fail whatever arrived after the stop marker.
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Pending) and not item.future.done():
                item.future.set_exception(StoreClosedError("the event store is closed"))

    def _fault(self, error: StorageUnavailable) -> None:
        if self.write_fault is None:
            log.error("store.write_failed", error=str(error))
        self.write_fault = str(error)

    async def check_writable(self) -> str | None:
        """While a write fault is known, try a commit that changes nothing; the fault's reason
        if the database still cannot write, else ``None``."""
        if self._closed:
            raise StoreClosedError("the event store is closed")
        if self.write_fault is None or self._writer is None:
            return self.write_fault
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._writer.probe)
        except StorageUnavailable as exc:
            self.write_fault = str(exc)
        else:
            log.info("store.write_recovered")
            self.write_fault = None
        return self.write_fault

    def _publish(self, committed: list[RecordedEvent]) -> None:
        """Hand committed events to live subscribers once each, in position order."""
        fresh = [event for event in committed if event.position > self._published]
        if not fresh:
            return
        if fresh[0].position != self._published + 1:
            # Another process committed in between: read its events from the log first.
            self._publish_from_log()
            return
        self._published = fresh[-1].position
        self.live.publish(fresh)

    def _publish_from_log(self) -> None:
        """Publish whatever the log holds after the last published position (another
        process's events). A read on the calling thread: WAL readers never wait for a lock."""
        reader = self._log_reader
        if self._closed or reader is None:
            return
        while True:
            try:
                rows = reader.execute(
                    f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ?"
                    " ORDER BY position LIMIT 1000",
                    (self._published,),
                ).fetchall()
            except sqlite3.Error:
                return  # the next change or commit looks again
            if not rows:
                return
            events = [RecordedEvent(*row) for row in rows]
            self._published = events[-1].position
            self.live.publish(events)

    # -- reads ------------------------------------------------------------------------------

    def _reader(self) -> aiosqlite.Connection:
        if self._closed or not self._readers:
            raise StoreClosedError("the event store is closed")
        self._next_reader = (self._next_reader + 1) % len(self._readers)
        return self._readers[self._next_reader]

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on a reader connection (used by the projections' queries)."""
        try:
            rows = await self._reader().execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc
        return [tuple(row) for row in rows]

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def read_stream(
        self, stream: str, after_seq: int = 0, limit: int = 500
    ) -> list[RecordedEvent]:
        """Up to ``limit`` events of ``stream`` with seq > ``after_seq``, in seq order."""
        return await self._read_log(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
            (stream, after_seq, limit),
        )

    async def read_all(self, after_position: int = 0, limit: int = 500) -> list[RecordedEvent]:
        """Up to ``limit`` events with position > ``after_position``, in position order."""
        return await self._read_log(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
            (after_position, limit),
        )

    async def _read_log(self, sql: str, params: tuple[Any, ...]) -> list[RecordedEvent]:
        """Log reads are index range scans bounded by their limit (SSE batches are at most
        500 rows, well under a millisecond), so they run on the calling thread: a hop to a
        reader thread costs about twice the query itself on the reference machine (bench/
        append.py, catch-up). The inline connection never waits for a lock; if SQLite ever
        answers busy, the read goes to a reader thread like any other query."""
        if self._closed or self._log_reader is None:
            raise StoreClosedError("the event store is closed")
        try:
            rows = self._log_reader.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            rows = await self.fetch_all(sql, params)
        return [RecordedEvent(*row) for row in rows]

    async def head(self) -> int:
        """The position of the last committed event (0 for an empty log)."""
        row = await self.fetch_one("SELECT max(position) FROM events")
        return int(row[0] or 0) if row else 0

    async def last_seq(self, stream: str) -> int:
        """The seq of the last event of ``stream`` (0 when it does not exist)."""
        row = await self.fetch_one("SELECT max(seq) FROM events WHERE stream = ?", (stream,))
        return int(row[0] or 0) if row else 0

    async def subscribe(
        self, stream: str, after_seq: int = 0, batch_limit: int = 500
    ) -> AsyncGenerator[RecordedEvent, None]:
        """Events of ``stream`` after ``after_seq``: the log first, then live as they commit.

        Catch-up and live tail are one loop over the same cursor, so there is no hand-over to
        get wrong: whatever committed after the cursor is read (from the shared in-memory
        window when it covers the cursor, else from the log), and only when nothing is left
        does the subscriber wait for the next commit. The wait is armed *before* the read, so
        a commit that lands during the read is never missed. Close the iterator (``aclose``
        or ``contextlib.aclosing``) to release the subscription at once.
        """
        if self._closed:
            raise StoreClosedError("the event store is closed")
        tail = self.live.acquire(stream)
        try:
            cursor = after_seq
            while not self._closed:
                changed = tail.changed
                batch = tail.after(cursor, batch_limit)
                if batch is None:
                    batch = await self.read_stream(stream, cursor, batch_limit)
                if batch:
                    for event in batch:
                        cursor = event.seq
                        yield event
                    continue
                await changed.wait()
        finally:
            self.live.release(stream, tail)

    # -- audit ------------------------------------------------------------------------------

    async def verify(self) -> VerifyReport:
        """Walk the whole log and report the first position that breaks the chain, if any."""
        if self._closed:
            raise StoreClosedError("the event store is closed")

        def run() -> VerifyReport:
            conn = connect(self.path, self._synchronous)
            try:
                return verify_connection(conn)
            finally:
                conn.close()

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise StorageError(f"verify failed: {exc}") from exc


def _create_private(path: str) -> None:
    """Create a new log file readable by its owner only (0600): SQLite gives its ``-wal`` and
    ``-shm`` files the same mode. An existing file keeps the mode it has."""
    if path == ":memory:" or path.startswith("file:") or os.path.exists(path):
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _writable(path: str) -> bool:
    """Whether the log and the files SQLite makes beside it (``-wal``, ``-shm``) can be
    written there."""
    folder = os.path.dirname(os.path.abspath(path))
    return os.access(folder, os.W_OK) and (not os.path.exists(path) or os.access(path, os.W_OK))


def _inline_reader(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA busy_timeout = 0")
    return conn


@contextlib.asynccontextmanager
async def open_store(
    path: str, projections: Sequence[Projection] = (), **options: Any
) -> AsyncIterator[SQLiteEventStore]:
    """``async with open_store(path) as store:`` — open, yield, close."""
    store = await SQLiteEventStore.open(path, projections, **options)
    try:
        yield store
    finally:
        await store.close()
