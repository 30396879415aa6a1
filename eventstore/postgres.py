"""The PostgreSQL event store: the same log, the same hashes, any number of processes.

Driver: psycopg 3. Projections and the group-commit writer are synchronous code on the store's
writer thread (a projection reads and writes rows inside the append transaction), and psycopg's
synchronous connection lets the very same :class:`eventstore.writer.BatchWriter` and the very
same projection definitions run on both backends; asyncpg has no synchronous API, so it would
need every projection written twice or run through a second event loop. Reads on the event loop
(the log for SSE and subscribers, the projections' queries) use asyncpg: measured on the
reference machine, a 50-event stream read takes about 2.5 times longer through psycopg's async
connection than through asyncpg, whose per-connection prepared-statement cache suits these few,
hot queries (README.md, "Storage backends").

Gapless positions across processes: every write transaction locks the one row of
``events_head`` (``SELECT ... FOR UPDATE``) before it reads the head, and updates it before
commit, so commits are serialised at the head once per batch while each process still
group-commits its own appends. ``data`` and ``created_at`` are TEXT exactly as hashed, so an
event's hash is the same byte for byte as on SQLite.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import psycopg
import psycopg.errors
from psycopg import generators
from psycopg.abc import PQGen
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.pq.abc import PGconn, PGresult
from psycopg.waiting import Wait

from eventstore.errors import StorageError, StorageUnavailable, StoreClosedError
from eventstore.model import GENESIS_HASH, RecordedEvent
from eventstore.pg_listen import Listener
from eventstore.projection import Projection
from eventstore.sql import Database, InsertRefused
from eventstore.store import GroupCommitStore

__all__ = ["NOTIFY_CHANNEL", "PostgresDatabase", "PostgresEventStore"]

#: Every commit sends ``pg_notify(NOTIFY_CHANNEL, '<head position>')`` in its transaction, so
#: other processes can learn of new events without polling.
NOTIFY_CHANNEL = "runlog_events"
_SCHEMA_LOCK = 0x72756E6C6F67  # any constant: serialises schema creation across processes

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS events (
        position   BIGINT PRIMARY KEY,
        stream     TEXT COLLATE "C" NOT NULL,
        seq        BIGINT NOT NULL CHECK (seq >= 1),
        type       TEXT NOT NULL,
        data       TEXT NOT NULL,
        created_at TEXT NOT NULL,
        hash       TEXT NOT NULL,
        UNIQUE (stream, seq)
    )""",
    """CREATE OR REPLACE FUNCTION runlog_events_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'events is append-only: % is not allowed', TG_OP;
    END
    $$""",
    """CREATE OR REPLACE TRIGGER events_append_only_row
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION runlog_events_append_only()""",
    """CREATE OR REPLACE TRIGGER events_append_only_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION runlog_events_append_only()""",
    """CREATE TABLE IF NOT EXISTS events_head (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        position BIGINT NOT NULL,
        hash     TEXT NOT NULL
    )""",
    f"""INSERT INTO events_head (id, position, hash)
    SELECT 1, coalesce(max(position), 0),
        coalesce((SELECT hash FROM events ORDER BY position DESC LIMIT 1), '{GENESIS_HASH}')
    FROM events
    ON CONFLICT (id) DO NOTHING""",
    """CREATE TABLE IF NOT EXISTS projection_checkpoints (
        name     TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )""",
]

_LOCK_HEAD = b"SELECT position, hash FROM events_head WHERE id = 1 FOR UPDATE"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_COPY_EVENTS = b"COPY events (position, stream, seq, type, data, created_at, hash) FROM STDIN"
#: Rows waiting for the commit are sent at once beyond this many bytes (``runlog copy``).
_PENDING_LIMIT = 4 << 20
_COPY_CHUNK = 1 << 20
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(text: str) -> str:
    """``text`` as a field of COPY's text format (backslash, tab, newline and CR escaped)."""
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_COPY_ESCAPES)
    return text


def copy_rows(rows: Sequence[Sequence[Any]]) -> bytes:
    """Rows of the events table in COPY's text format."""
    esc = _copy_text
    return "".join(
        [
            f"{position:d}\t{esc(stream)}\t{seq:d}\t{esc(type_)}\t{esc(data)}"
            f"\t{esc(created_at)}\t{esc(hash_)}\n"
            for position, stream, seq, type_, data, created_at, hash_ in rows
        ]
    ).encode()


def _copy_in(pgconn: PGconn, data: bytes) -> PQGen[None]:
    """Feed ``data`` to a COPY FROM STDIN the server is waiting for, and end it."""
    view = memoryview(data)
    for offset in range(0, len(view), _COPY_CHUNK):
        chunk = view[offset : offset + _COPY_CHUNK]
        while pgconn.put_copy_data(chunk) == 0:
            while not (yield Wait.W):
                continue
    while pgconn.put_copy_end(None) == 0:
        while not (yield Wait.W):
            continue
    while pgconn.flush() != 0:
        while not (yield Wait.W):
            continue


def _text_rows(result: PGresult) -> list[tuple[Any, ...]]:
    """The rows of a simple query's result, every value as text (None for NULL)."""
    columns = range(result.nfields)
    rows = []
    for row in range(result.ntuples):
        values = [result.get_value(row, column) for column in columns]
        rows.append(tuple(None if v is None else bytes(v).decode() for v in values))
    return rows


_placeholders: dict[str, str] = {}
_numbered: dict[str, str] = {}


def to_asyncpg(sql: str) -> str:
    """``?`` placeholders to asyncpg's ``$1, $2, ...``."""
    converted = _numbered.get(sql)
    if converted is None:
        parts = sql.split("?")
        converted = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        _numbered[sql] = converted
    return converted


def to_pg(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s`` (our SQL has no ``?`` or ``%`` in literals)."""
    converted = _placeholders.get(sql)
    if converted is None:
        converted = _placeholders[sql] = sql.replace("%", "%%").replace("?", "%s")
    return converted


_COMMENT = re.compile(r"--[^\n]*")
_TYPES = [
    (re.compile(r"\bTEXT\b(?! COLLATE)"), 'TEXT COLLATE "C"'),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
]


def portable_ddl(statement: str) -> str:
    """A projection's DDL for PostgreSQL. Text compares bytewise (``COLLATE "C"``) as on
    SQLite, so ``ORDER BY`` over ids and cursors give the same order on both; integers are
    64-bit and reals double precision, as SQLite stores them."""
    statement = _COMMENT.sub("", statement)
    if not statement.lstrip().upper().startswith("CREATE TABLE"):
        return statement
    for pattern, replacement in _TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


class PostgresDatabase:
    """:class:`eventstore.sql.Database` over a synchronous psycopg connection (autocommit;
    transactions are explicit, as on SQLite)."""

    dialect = "postgres"
    errors: tuple[type[Exception], ...] = (psycopg.Error,)

    def __init__(self, conn: psycopg.Connection[Any], url: str = "") -> None:
        self.conn = conn
        self._url = url
        self._cursor = conn.cursor()
        # Round trips are most of a batch's cost (the commit's fsync aside), so BEGIN travels
        # with the head's lock, and the head's update and the notification with COMMIT.
        self._begin_pending = False
        self._new_head: tuple[int, str] | None = None
        self._checkpoints = b""  # the projections' checkpoint update, sent with the commit
        # Rows from insert_events not sent yet, in COPY's text format: they travel with the
        # commit (one COPY, the head's update, the notification and COMMIT in one query)
        # unless a statement of the transaction needs them in the table first.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._savepoints = 0

    def _begin(self) -> None:
        if self._begin_pending:
            self._begin_pending = False
            self._cursor.execute(b"BEGIN")
        if self._pending:
            self._flush_rows()

    def _take_rows(self) -> bytes:
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        return data

    def _flush_rows(self) -> None:
        self._exchange(_COPY_EVENTS, self._take_rows())

    def _exchange(self, query: bytes, copy_data: bytes = b"") -> list[PGresult]:
        """Send ``query`` (one or more statements, at most one ``COPY ... FROM STDIN``, fed
        ``copy_data``) as one simple query straight to libpq, and wait for its results
        without holding the GIL. About a third of the CPU of the same through a cursor: the
        writer's few fixed statements need none of its adaptation or result machinery.
        Raises the first error; a refused COPY as :class:`InsertRefused`."""
        conn = self.conn
        pgconn = conn.pgconn
        copy_failed = False
        pgconn.send_query(query)
        results: list[PGresult] = conn.wait(generators.execute(pgconn))
        if results and results[-1].status == ExecStatus.COPY_IN:
            results.pop()
            conn.wait(_copy_in(pgconn, copy_data))
            after: list[PGresult] = conn.wait(generators.fetch_many(pgconn))
            copy_failed = bool(after) and after[0].status == ExecStatus.FATAL_ERROR
            results.extend(after)
        for result in results:
            if result.status == ExecStatus.FATAL_ERROR:
                error = psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
                if copy_failed:
                    raise InsertRefused(str(error)) from error
                raise error
        return results

    @classmethod
    def connect(cls, url: str) -> PostgresDatabase:
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise StorageUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc
        return cls(conn, url)

    def _reconnect_if_lost(self) -> None:
        """A server restart or a terminated backend leaves the connection broken: the batch
        that saw it failed (its appends got an error, so nothing acknowledged is lost), and
        the next one starts on a new connection."""
        if (self.conn.broken or self.conn.closed) and self._url:
            self.conn.close()
            self.conn = self.connect(self._url).conn
            self._cursor = self.conn.cursor()

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._begin()
        self._cursor.execute(to_pg(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._begin()
        self._cursor.executemany(to_pg(sql), rows)

    def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self._begin()
        row = self._cursor.execute(to_pg(sql), params).fetchone()
        return None if row is None else tuple(row)

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._begin()
        return [tuple(row) for row in self._cursor.execute(to_pg(sql), params).fetchall()]

    def execute_ddl(self, statement: str) -> None:
        self._begin()
        self._cursor.execute(portable_ddl(statement).encode())

    def create_log_schema(self) -> None:
        for statement in SCHEMA:
            self._cursor.execute(statement.encode())

    def begin_schema(self) -> None:
        self._cursor.execute(b"BEGIN")
        self._cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        # Writers take the head's row before they touch any table; so must a store starting
        # beside them, before its DDL locks tables, or each waits for the other (deadlock).
        exists = self._cursor.execute(b"SELECT to_regclass('events_head')").fetchone()
        if exists is not None and exists[0] is not None:
            self._cursor.execute(_LOCK_HEAD)

    def begin_write(self) -> None:
        self._reconnect_if_lost()
        self._begin_pending = True
        self._new_head = None
        self._checkpoints = b""

    def insert_events(self, rows: Sequence[Sequence[Any]]) -> None:
        """The rows as one COPY (measured on the reference machine, 50 rows take about 0.6 ms
        this way against 2 ms for ``executemany`` or an ``unnest`` INSERT), sent with the
        commit: the batch's inserts, the head's update, the notification and COMMIT then cost
        two round trips (one to start the COPY) instead of three. Any other statement of the
        transaction sends them first, so a projection sees its events in the table; under a
        savepoint they go at once, so a refusal stays with its item."""
        self._begin()
        data = copy_rows(rows)
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._savepoints or self._pending_bytes > _PENDING_LIMIT:
            self._flush_rows()

    def begin_snapshot(self) -> None:
        self._cursor.execute(b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def commit(self) -> None:
        if self._begin_pending:
            self._begin_pending = False
            self._exchange(b"BEGIN")
        query = b"COMMIT"
        checkpoints, self._checkpoints = self._checkpoints, b""
        if self._new_head is not None:
            position, digest = self._new_head
            self._new_head = None
            # Literals, not parameters, so the statements go in one simple query: both are
            # ours (an int, and a sha256 hex digest checked in set_head).
            query = (
                f"UPDATE events_head SET position = {position:d}, hash = '{digest}'"
                f" WHERE id = 1; SELECT pg_notify('{NOTIFY_CHANNEL}', '{position:d}');"
                " COMMIT"
            ).encode()
        query = checkpoints + query
        if self._pending:
            self._exchange(_COPY_EVENTS + b"; " + query, self._take_rows())
        else:
            self._exchange(query)

    def rollback(self) -> None:
        self._begin_pending = False
        self._new_head = None
        self._checkpoints = b""
        self._pending.clear()
        self._pending_bytes = 0
        self._savepoints = 0
        if self.conn.broken or self.conn.closed:
            return
        if self.in_transaction:
            self._cursor.execute(b"ROLLBACK")

    def savepoint(self, name: str) -> None:
        self._begin()
        self._cursor.execute(f"SAVEPOINT {name}".encode())
        self._savepoints += 1

    def rollback_to(self, name: str) -> None:
        self._pending.clear()
        self._pending_bytes = 0
        self._cursor.execute(f"ROLLBACK TO SAVEPOINT {name}".encode())

    def release(self, name: str) -> None:
        self._begin()
        self._cursor.execute(f"RELEASE SAVEPOINT {name}".encode())
        self._savepoints = max(0, self._savepoints - 1)

    def head(self) -> tuple[int, str]:
        return self.head_and()[0]

    def head_and(self, *queries: str) -> tuple[tuple[int, str], list[list[tuple[Any, ...]]]]:
        # The row lock is held until commit: this is what serialises writers of every
        # process, once per batch. In READ COMMITTED the locked row is re-read after the
        # wait, so the head seen is the one the previous holder committed, and the queries
        # that follow it see every commit up to it.
        query = b"".join([_LOCK_HEAD, *(b"; " + q.encode() for q in queries)])
        if self._begin_pending:
            self._begin_pending = False
            results = self._exchange(b"BEGIN; " + query)
        else:
            self._begin()
            results = self._exchange(query)
        results = results[len(results) - 1 - len(queries) :]
        result = results[0]
        if result.ntuples != 1:
            raise StorageError("the events_head row is missing: the schema is damaged")
        position, digest = result.get_value(0, 0), result.get_value(0, 1)
        if position is None or digest is None:
            raise StorageError("the events_head row is damaged")
        return (int(bytes(position)), bytes(digest).decode("ascii")), [
            _text_rows(r) for r in results[1:]
        ]

    def set_checkpoints(self, position: int, names: Sequence[str]) -> None:
        """Written by :meth:`commit`, in the same round trip: literals, as for the head (an
        int, and the projections' names quoted)."""
        quoted = ", ".join("'" + name.replace("'", "''") + "'" for name in names)
        self._checkpoints = (
            f"UPDATE projection_checkpoints SET position = {int(position):d}"
            f" WHERE name IN ({quoted}); "
        ).encode()

    def set_head(self, position: int, hash_: str) -> None:
        """Written by :meth:`commit`, in the same round trip (and notified at commit)."""
        if not _HEX64.fullmatch(hash_):
            raise StorageError(f"not a sha256 hex digest: {hash_!r}")
        self._new_head = (int(position), hash_)

    def table_columns(self, table: str) -> list[str]:
        self._begin()
        rows = self._cursor.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s"
            " ORDER BY ordinal_position",
            (table,),
        ).fetchall()
        return [row[0] for row in rows]

    def table_exists(self, table: str) -> bool:
        self._begin()
        row = self._cursor.execute(
            "SELECT 1 FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        ).fetchone()
        return row is not None

    def unavailable(self, exc: Exception) -> bool:
        # OperationalError covers a lost connection, a server shutting down and insufficient
        # resources (disk full, out of memory); a read-only server refuses with class 25006.
        return (
            isinstance(exc, (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction))
            or self.conn.broken
        )

    def probe(self) -> None:
        self._reconnect_if_lost()
        self._begin_pending = False
        self._new_head = None
        try:
            self._cursor.execute(
                b"BEGIN; UPDATE events_head SET position = position WHERE id = 1; COMMIT"
            )
        except psycopg.Error:
            if not self.conn.broken and self.in_transaction:
                self._cursor.execute(b"ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()


class PostgresEventStore(GroupCommitStore):
    """The event store on a PostgreSQL database (``postgresql://`` URL)."""

    def __init__(
        self, url: str, projections: Sequence[Projection] = (), *, readers: int = 8
    ) -> None:
        super().__init__(_display(url), projections)
        self.url = url
        self._reader_count = readers
        self._pool: _Readers | None = None
        #: Other processes' commits reach live subscribers through it (eventstore/pg_listen.py).
        self.listener = Listener(
            url,
            channel=NOTIFY_CHANNEL,
            read_after=self.read_all,
            publish=self._publish_read,
            published=lambda: self._published,
            covered=lambda: max(self._published, self._written),
            between_batches=self._between_batches,
            resynced=self._resynced,
        )

    @classmethod
    async def open(
        cls, url: str, projections: Sequence[Projection] = (), *, readers: int = 8
    ) -> PostgresEventStore:
        store = cls(url, projections, readers=readers)
        await store._start()
        return store

    async def __aenter__(self) -> PostgresEventStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _connect(self) -> Database:
        return PostgresDatabase.connect(self.url)

    async def _open_readers(self) -> None:
        self._pool = await _Readers.open(self.url, self._reader_count)
        self._published = await self.head()
        self.listener.start()

    async def _close_readers(self) -> None:
        await self.listener.stop()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _publish_from_log(self) -> None:
        self.listener.look()

    def _resynced(self) -> None:
        self.live.wake_all()
        for observe in self.reconnect_observers:
            observe()

    def _reader(self) -> _Readers:
        if self._closed or self._pool is None:
            raise StoreClosedError("the event store is closed")
        return self._pool

    _read_stream_wire_sql = (
        "SELECT convert_to(seq::text, 'UTF8'), convert_to(type, 'UTF8'), convert_to(data, 'UTF8'),"
        " convert_to(created_at, 'UTF8')"
        " FROM events WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?"
    )

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        reader = self._reader()
        try:
            rows = await reader.fetch(to_asyncpg(sql), params)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StorageError(f"read failed: {exc}") from exc
        return [tuple(row) for row in rows]

    async def _read_log(self, sql: str, params: tuple[Any, ...]) -> list[RecordedEvent]:
        reader = self._reader()
        try:
            rows = await reader.fetch(to_asyncpg(sql), params)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StorageError(f"read failed: {exc}") from exc
        return [RecordedEvent(*row) for row in rows]


class _Readers:
    """The read connections: an asyncpg connection runs one query at a time, so concurrent
    readers (SSE streams, requests) each borrow an idle one, up to ``size``, and wait beyond.

    Not ``asyncpg.Pool``: its acquire and release (a queue, a holder, timeouts, a reset) cost
    about as much as the 50-event read itself on the reference machine (a pool fetch took
    1.36 times a plain connection's). These connections are read-only and keep no session
    state, so borrowing one is taking it from a list. A connection whose query failed for
    any reason other than the server refusing the query (cancelled, lost) is closed, not
    reused."""

    def __init__(self, url: str, size: int) -> None:
        self._url = url
        self._size = max(1, size)
        self._idle: list[asyncpg.Connection] = []
        self._count = 0
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._closed = False

    @classmethod
    async def open(cls, url: str, size: int) -> _Readers:
        readers = cls(url, size)
        readers._count = 1
        try:
            readers._idle.append(await readers._connect())
        except BaseException:
            readers._count = 0
            raise
        return readers

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self._url,
            timeout=10,
            server_settings={"default_transaction_read_only": "on"},
        )

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[asyncpg.Record]:
        conn = self._idle.pop() if self._idle else await self._borrow()
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *params)
        except asyncpg.PostgresError:
            self._give_back(conn)
            raise
        except BaseException:
            self._count -= 1
            conn.terminate()
            self._wake(None)
            raise
        self._give_back(conn)
        return rows

    async def _borrow(self) -> asyncpg.Connection:
        while True:
            if self._closed:
                raise asyncpg.InterfaceError("the read connections are closed")
            if self._idle:
                return self._idle.pop()
            if self._count < self._size:
                self._count += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._count -= 1
                    self._wake(None)
                    raise
            waiter: asyncio.Future[asyncpg.Connection | None]
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    # Handed a connection (or a free slot) as we were cancelled: pass it on.
                    handed = waiter.result()
                    if handed is not None:
                        self._give_back(handed)
                    else:
                        self._wake(None)
                raise
            if conn is not None:
                return conn

    def _give_back(self, conn: asyncpg.Connection) -> None:
        if self._closed or conn.is_closed():
            self._count -= 1
            if not conn.is_closed():
                conn.terminate()
            self._wake(None)
            return
        if not self._wake(conn):
            self._idle.append(conn)

    def _wake(self, conn: asyncpg.Connection | None) -> bool:
        """Hand ``conn`` (or, with None, a free slot) to the first waiter still waiting."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        self._count -= len(idle)
        while self._wake(None):
            pass
        for conn in idle:
            await conn.close()


def _display(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
