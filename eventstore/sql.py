"""The small SQL port shared by the store's writer, the projections and the audit tools.

Projections and queries are written once, with ``?`` placeholders and SQL that SQLite and
PostgreSQL both accept (``ON CONFLICT ... DO NOTHING/UPDATE``, ``coalesce``, ``LIMIT``). What
must differ by engine lives behind this port, in one adapter per backend: placeholder style,
column types in DDL (``execute_ddl``), how a write transaction takes the head of the log, and
which driver exceptions mean what. Everything here is synchronous: it runs on the store's one
writer thread (or in a command-line tool), so one definition of a projection serves both
backends (README.md, "Storage backends").
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

__all__ = ["Database", "InsertRefused", "SqlConnection", "SqliteDatabase"]

_INSERT = (
    "INSERT INTO events (position, stream, seq, type, data, created_at, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class InsertRefused(Exception):
    """The database refused rows of :meth:`Database.insert_events` when it received them,
    which may be as late as the commit (a backend may send them with it). The transaction is
    lost; the writer redoes the batch item by item to find whose rows they were."""


class SqlConnection(Protocol):
    """What a projection may do inside the append transaction."""

    #: ``"sqlite"`` or ``"postgres"``.
    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None: ...

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def execute_ddl(self, statement: str) -> None:
        """Run one portable DDL statement (``TEXT``, ``BIGINT``, ``DOUBLE PRECISION``),
        adjusted to the engine."""
        ...

    def table_columns(self, table: str) -> list[str]:
        """The columns of ``table`` in order (none when it does not exist)."""
        ...


class Database(SqlConnection, Protocol):
    """A synchronous connection to one log: the writer's and the audit tools' view."""

    #: Exceptions of the driver (translated to the store's errors at the boundary).
    errors: tuple[type[Exception], ...]

    @property
    def in_transaction(self) -> bool: ...

    def create_log_schema(self) -> None:
        """Create the events table, its guards and the checkpoints table if missing (inside
        the current write transaction)."""
        ...

    def begin_schema(self) -> None:
        """Start the transaction that creates or upgrades the schema (one process at a time)."""
        ...

    def begin_write(self) -> None:
        """Start a write transaction that holds the head of the log until it ends: no other
        connection, in this process or another, can append meanwhile."""
        ...

    def begin_snapshot(self) -> None:
        """Start a read-only transaction that sees one consistent snapshot."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def savepoint(self, name: str) -> None: ...

    def rollback_to(self, name: str) -> None: ...

    def release(self, name: str) -> None: ...

    def head(self) -> tuple[int, str]:
        """Position and hash of the last event (inside ``begin_write``)."""
        ...

    def head_and(self, *queries: str) -> tuple[tuple[int, str], list[list[tuple[Any, ...]]]]:
        """:meth:`head`, and the rows of ``queries`` (read-only SQL with no parameters) run
        right after it in the same transaction; on PostgreSQL in the same round trip. Values
        may come back as text: the caller converts them."""
        ...

    def insert_events(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert rows of the events table (every column, in order)."""
        ...

    def set_head(self, position: int, hash_: str) -> None:
        """Record a new head at the end of a write transaction (and announce it)."""
        ...

    def set_checkpoints(self, position: int, names: Sequence[str]) -> None:
        """Record that the projections ``names`` have applied the log up to ``position``
        (inside the write transaction; PostgreSQL sends it with the commit)."""
        ...

    def table_exists(self, table: str) -> bool: ...

    def unavailable(self, exc: Exception) -> bool:
        """Whether the driver error ``exc`` says the database cannot write now (disk full,
        I/O error, read-only, connection lost), not that the write itself is wrong."""
        ...

    def probe(self) -> None:
        """Commit a transaction that writes but changes nothing: raises the driver's error
        while the database cannot write."""
        ...

    def close(self) -> None: ...


#: SQLite's primary result codes for a database that cannot write now but may later: BUSY,
#: LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL.
_SQLITE_TRANSIENT = frozenset({5, 6, 7, 8, 10, 13, 14, 15})


class SqliteDatabase:
    """:class:`Database` over a stdlib ``sqlite3`` connection in autocommit mode."""

    dialect = "sqlite"
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        #: The connection's own wait for another connection's lock, and the wait in force:
        #: :meth:`try_begin_write` sets none, and it stays so (inside a write transaction in
        #: WAL mode nothing waits) until a statement that may wait puts it back (:meth:`_wait`).
        self._busy_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
        self._busy_now = self._busy_ms

    def _wait(self) -> None:
        """Wait for other connections' locks again, as the connection was set up to."""
        if self._busy_now != self._busy_ms:
            self.conn.execute(f"PRAGMA busy_timeout = {self._busy_ms:d}")
            self._busy_now = self._busy_ms

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else tuple(row)

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        # Rows are tuples already (no row factory is set on these connections).
        return self.conn.execute(sql, params).fetchall()

    def execute_ddl(self, statement: str) -> None:
        # SQLite maps BIGINT to INTEGER and DOUBLE PRECISION to REAL affinity by itself.
        self.conn.execute(statement)

    def create_log_schema(self) -> None:
        from eventstore.schema import SCHEMA, split_script

        for statement in split_script(SCHEMA):
            self.conn.execute(statement)

    def begin_schema(self) -> None:
        self._wait()
        self.conn.execute("BEGIN IMMEDIATE")

    def begin_write(self) -> None:
        # IMMEDIATE takes the file's write lock now: the head read next is the head we
        # append after, whichever process writes the file.
        self._wait()
        self.conn.execute("BEGIN IMMEDIATE")

    def try_begin_write(self) -> bool:
        """:meth:`begin_write` if no other connection holds the write lock; else False at
        once, having started nothing (for the event loop, which must not wait for it)."""
        conn = self.conn
        if self._busy_now:
            conn.execute("PRAGMA busy_timeout = 0")
            self._busy_now = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                return False
            raise
        return True

    def begin_snapshot(self) -> None:
        self._wait()
        self.conn.execute("BEGIN")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def savepoint(self, name: str) -> None:
        self.conn.execute(f"SAVEPOINT {name}")

    def rollback_to(self, name: str) -> None:
        self.conn.execute(f"ROLLBACK TO {name}")

    def release(self, name: str) -> None:
        self.conn.execute(f"RELEASE {name}")

    def head(self) -> tuple[int, str]:
        from eventstore.model import GENESIS_HASH

        row = self.conn.execute(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
        ).fetchone()
        return (row[0], row[1]) if row else (0, GENESIS_HASH)

    def head_and(self, *queries: str) -> tuple[tuple[int, str], list[list[tuple[Any, ...]]]]:
        return self.head(), [self.fetch_all(query) for query in queries]

    def set_checkpoints(self, position: int, names: Sequence[str]) -> None:
        self.conn.execute(
            "UPDATE projection_checkpoints SET position = ? WHERE name IN"
            f" ({','.join('?' * len(names))})",
            (position, *names),
        )

    def set_head(self, position: int, hash_: str) -> None:
        """The head is the last row itself on SQLite (the write lock covers the file)."""

    def insert_events(self, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(_INSERT, rows)

    def table_columns(self, table: str) -> list[str]:
        return [row[1] for row in self.conn.execute(f'PRAGMA table_info("{table}")')]

    def copy_from(self, source: SqliteDatabase, schema: str) -> None:
        """Make the database attached here as ``schema`` (``ATTACH DATABASE ':memory:'``,
        before this connection's transaction began) a copy of ``source``'s main database, so
        that one query can compare tables of both (``rebuild --check``). Allowed inside a read
        transaction that has not touched ``schema``."""
        image = source.conn.serialize()
        self.conn.deserialize(image, name=schema)

    def table_exists(self, table: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        return row is not None

    def unavailable(self, exc: Exception) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        return isinstance(code, int) and code & 0xFF in _SQLITE_TRANSIENT

    def probe(self) -> None:
        # The header's user_version set to itself: a page is written, nothing changes.
        conn = self.conn
        self._wait()
        try:
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()
