"""The SQLite event store: one file, WAL, one group-commit writer, separate readers."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiosqlite

from eventstore.errors import StorageError, StoreClosedError
from eventstore.model import RecordedEvent
from eventstore.projection import Projection
from eventstore.schema import connect
from eventstore.sql import Database, SqliteDatabase
from eventstore.store import GroupCommitStore

__all__ = ["SQLiteEventStore", "open_store"]


class SQLiteEventStore(GroupCommitStore):
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
        super().__init__(path, projections)
        self.path = path
        self._synchronous = synchronous
        self._reader_count = readers
        self._readers: list[aiosqlite.Connection] = []
        self._log_reader: sqlite3.Connection | None = None
        self._next_reader = 0

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

    # -- connections ------------------------------------------------------------------------

    def _connect(self) -> Database:
        return SqliteDatabase(connect(self.path, self._synchronous))

    async def _open_readers(self) -> None:
        for _ in range(self._reader_count):
            reader = await aiosqlite.connect(self.path, isolation_level=None)
            await reader.execute("PRAGMA busy_timeout = 10000")
            await reader.execute("PRAGMA query_only = ON")
            self._readers.append(reader)
        self._log_reader = _inline_reader(self.path)

    async def _close_readers(self) -> None:
        for reader in self._readers:
            await reader.close()
        self._readers.clear()
        if self._log_reader is not None:
            self._log_reader.close()
            self._log_reader = None

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
