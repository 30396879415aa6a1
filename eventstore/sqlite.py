"""The SQLite event store: one file, WAL, one group-commit writer, separate readers."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiosqlite

from eventstore.errors import StorageError, StoreClosedError
from eventstore.model import RecordedEvent
from eventstore.projection import Projection
from eventstore.schema import EVENT_COLUMNS, connect
from eventstore.sql import Database, SqliteDatabase
from eventstore.store import GroupCommitStore
from eventstore.watch import FileWatch, touch

__all__ = ["SQLiteEventStore", "open_read_only", "open_store"]


class SQLiteEventStore(GroupCommitStore):
    """The event store on a SQLite file.

    Open it with :meth:`open` inside a running event loop and close it with :meth:`close`.
    """

    # An event of bench/e2e.py's runs takes some 40 µs to write, its projections included (its
    # log replayed through BatchWriter on a 2-core machine): a batch of this size holds the
    # event loop for a few milliseconds. At 100 clients most batches are smaller.
    _loop_batch_events = 128

    def __init__(
        self,
        path: str,
        projections: Sequence[Projection] = (),
        *,
        synchronous: str = "FULL",
        readers: int = 2,
    ) -> None:
        super().__init__(path, projections)
        self.path = path
        self._synchronous = synchronous
        self._reader_count = readers
        self._readers: list[aiosqlite.Connection] = []
        self._log_reader: sqlite3.Connection | None = None
        self._next_reader = 0
        # Other processes' events are read from the log when the file changes (or at this
        # process's next commit): GroupCommitStore._publish.
        self._watch = FileWatch(path + "-wal", self._publish_from_log)

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

    async def __aenter__(self) -> SQLiteEventStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _start(self) -> None:
        await super()._start()
        self._watch.start()

    async def close(self) -> None:
        self._watch.stop()
        await super().close()

    # -- connections ------------------------------------------------------------------------

    def _connect(self) -> Database:
        _create_private(self.path)
        db = SqliteDatabase(connect(self.path, self._synchronous))
        if str(db.conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            # Without WAL (a file system that cannot share its memory map) a commit may have
            # to wait for readers, and the loop's batches commit with no wait set: all go to
            # the writer thread.
            self._loop_batch_events = 0
        return db

    def _try_begin_write(self) -> bool:
        db = self._write_db
        assert isinstance(db, SqliteDatabase)
        return db.try_begin_write()

    def _open_failure(self, exc: Exception) -> str:
        reason = str(exc) if isinstance(exc, sqlite3.Error) else repr(exc)
        if not _writable(self.path):
            reason = f"the location is read-only ({reason})"
        return reason

    async def _open_readers(self) -> None:
        for _ in range(self._reader_count):
            reader = await aiosqlite.connect(self.path, isolation_level=None)
            await reader.execute("PRAGMA busy_timeout = 10000")
            await reader.execute("PRAGMA query_only = ON")
            self._readers.append(reader)
        self._log_reader = _inline_reader(self.path)
        row = self._log_reader.execute("SELECT coalesce(max(position), 0) FROM events")
        self._published = int(row.fetchone()[0])

    async def _close_readers(self) -> None:
        for reader in self._readers:
            await reader.close()
        self._readers.clear()
        if self._log_reader is not None:
            self._log_reader.close()
            self._log_reader = None

    # -- live: this process's commits and other processes' ----------------------------------

    def _committed(self, events: list[RecordedEvent]) -> None:
        # Other processes' stores on this file are told to look (eventstore/watch.py).
        if events:
            touch(self.path + "-wal")
        self._publish(events)

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
            self._publish_read([RecordedEvent(*row) for row in rows])

    # -- reads ------------------------------------------------------------------------------

    _read_stream_wire_sql = (
        "SELECT CAST(seq AS BLOB), CAST(type AS BLOB), CAST(data AS BLOB), CAST(created_at AS BLOB)"
        " FROM events WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?"
    )

    def _reader(self) -> aiosqlite.Connection:
        if self._closed or not self._readers:
            raise StoreClosedError("the event store is closed")
        self._next_reader = (self._next_reader + 1) % len(self._readers)
        return self._readers[self._next_reader]

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query for the projections' queries, on the calling thread like the
        log reads (see ``_read_log``): every query the API issues is an index lookup or a
        bounded range (tests/http/test_query_plans.py keeps it so), and the hop to a reader
        thread and back cost more than the query itself (bench/e2e.py: the GIL hand-offs
        were most of the server's system time). If SQLite answers busy, the query goes to a
        reader thread, which waits for the lock."""
        reader = self._log_reader
        if self._closed or reader is None:
            raise StoreClosedError("the event store is closed")
        try:
            return reader.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return await self._fetch_on_reader(sql, params)
        except sqlite3.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc

    async def _fetch_on_reader(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            rows = await self._reader().execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc
        return [tuple(row) for row in rows]

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
            rows = await self._fetch_on_reader(sql, params)
        return [RecordedEvent(*row) for row in rows]


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


def open_read_only(path: str) -> sqlite3.Connection:
    """The log opened for reading only: it is never written, not even its WAL. A copy on
    read-only media (where SQLite cannot make its ``-shm`` file) is opened as immutable."""
    if not os.path.exists(path):
        raise StorageError(f"no log at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True, isolation_level=None)
    return conn


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
