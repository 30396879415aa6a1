"""The synchronous half of the group-commit writer.

Everything here runs on the store's single writer thread, which owns the one write connection
(docs/architecture.md, "The log"). A batch — the head
read, every append's concurrency check, the inserts, the projections and their checkpoint, and
the commit — is a single call on that thread, so a batch costs one thread hop and one fsync.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence

from eventstore.errors import (
    ConcurrencyError,
    EventStoreError,
    StorageError,
    StorageUnavailable,
)
from eventstore.model import (
    GENESIS_HASH,
    AppendRequest,
    RecordedEvent,
    canonical_bytes,
    chain_hash,
)
from eventstore.projection import Projection
from eventstore.schema import EVENT_COLUMNS, SCHEMA, iter_events

__all__ = ["BatchWriter"]

_INSERT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_SEQ_CACHE_LIMIT = 200_000

Outcome = list[RecordedEvent] | EventStoreError
_Row = tuple[int, str, int, str, str, str, str]


class _IsolateItems(Exception):
    """A batch's combined write failed: redo it item by item to find whose it was."""


#: SQLite's primary result codes for a database that cannot write now but may later: BUSY,
#: LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL.
_TRANSIENT_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})


def unavailable(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says the database cannot write now (not that the append is wrong)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _TRANSIENT_CODES


def _store_error(exc: Exception) -> EventStoreError:
    if isinstance(exc, EventStoreError):
        return exc
    if isinstance(exc, sqlite3.Error) and unavailable(exc):
        error: StorageError = StorageUnavailable(f"the log cannot be written now: {exc}")
        error.__cause__ = exc
        return error
    if isinstance(exc, sqlite3.IntegrityError):
        message = f"append rejected by the database: {exc}"
    else:
        message = f"append failed (a projection, or the database): {exc!r}"
    error = StorageError(message)
    error.__cause__ = exc
    return error


class BatchWriter:
    """Appends batches of requests in one transaction each, keeping the hash chain."""

    def __init__(self, conn: sqlite3.Connection, projections: Sequence[Projection]) -> None:
        self._conn = conn
        self._projections = tuple(projections)
        # Last seq of recently written streams. Valid only while no other process has
        # written: every batch compares the head it reads with the head we last committed.
        self._seq_cache: dict[str, int] = {}
        self._cached_head = -1

    # -- set-up ---------------------------------------------------------------------------

    def create_schema(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_script(SCHEMA):
                conn.execute(statement)
            for projection in self._projections:
                projection.create(conn)
                conn.execute(
                    "INSERT OR IGNORE INTO projection_checkpoints (name, position) VALUES (?, 0)",
                    (projection.name,),
                )
            head = self._head()[0]
            self._refuse_cut_tail(head)
            self._catch_up_projections(head)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _refuse_cut_tail(self, head: int) -> None:
        """A projection that has applied events the log no longer holds means events were
        removed from the log's end: writing now would reuse their positions."""
        row = self._conn.execute(
            "SELECT name, position FROM projection_checkpoints ORDER BY position DESC LIMIT 1"
        ).fetchone()
        if row is not None and row[1] > head:
            raise StorageError(
                f"the log ends at position {head} but projection {row[0]!r} has applied up to"
                f" position {row[1]}: events were removed from the log's end; refusing to write"
                " (restore the log from a backup, or accept the cut with `runlog rebuild`)"
            )

    # -- the batch --------------------------------------------------------------------------

    def commit_batch(
        self, batch: Sequence[Sequence[AppendRequest]], created_at: str
    ) -> list[Outcome]:
        """Append every item of ``batch`` (each item atomic on its own) in one transaction.

        Every item is checked (its ``expected_seq``) and hashed before anything is written, and
        an item that fails its check is reported without touching the others. The accepted
        items are then written with one ``executemany`` and the projections applied. Only if a
        write fails (a projection raising, say) is the transaction rolled back and the batch
        redone item by item under savepoints, so the failure stays with its own item. If the
        commit itself fails the whole batch fails with :class:`StorageError`.
        """
        try:
            return self._commit(batch, created_at, isolate=False)
        except _IsolateItems:
            return self._commit(batch, created_at, isolate=True)

    def _commit(
        self, batch: Sequence[Sequence[AppendRequest]], created_at: str, *, isolate: bool
    ) -> list[Outcome]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot start a write transaction: {exc}") from exc
        batch_seqs: dict[str, int] = {}  # last seq of each stream written by this batch
        try:
            head_position, head_hash = self._head()
            if head_position != self._cached_head:
                # Another process wrote since our last commit: our seq cache is stale and our
                # projections may have missed its events.
                self._seq_cache.clear()
                self._catch_up_projections(head_position)
            outcomes: list[Outcome] = []
            first_position = head_position + 1
            rows: list[_Row] = []
            events: list[RecordedEvent] = []
            for item in batch:
                try:
                    item_rows, recorded = self._prepare(
                        item, head_position, head_hash, created_at, batch_seqs
                    )
                except EventStoreError as exc:
                    outcomes.append(exc)
                    continue
                if isolate:
                    conn.execute("SAVEPOINT item")
                    try:
                        self._write(item_rows, recorded)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO item")
                        conn.execute("RELEASE item")
                        outcomes.append(_store_error(exc))
                        continue
                    conn.execute("RELEASE item")
                else:
                    rows.extend(item_rows)
                    events.extend(recorded)
                for event in recorded:
                    batch_seqs[event.stream] = event.seq
                if recorded:
                    head_position = recorded[-1].position
                    head_hash = recorded[-1].hash
                outcomes.append(recorded)
            if rows:
                try:
                    self._write(rows, events)
                except Exception as exc:
                    raise _IsolateItems from exc
            if self._projections and head_position >= first_position:
                conn.execute(
                    "UPDATE projection_checkpoints SET position = ? WHERE name IN"
                    f" ({','.join('?' * len(self._projections))})",
                    (head_position, *(p.name for p in self._projections)),
                )
            conn.execute("COMMIT")
        except BaseException as exc:
            self._seq_cache.clear()
            self._cached_head = -1
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _store_error(exc) from exc
            raise
        self._seq_cache.update(batch_seqs)
        self._cached_head = head_position
        if len(self._seq_cache) > _SEQ_CACHE_LIMIT:
            self._seq_cache.clear()
        return outcomes

    def _prepare(
        self,
        item: Sequence[AppendRequest],
        head_position: int,
        head_hash: str,
        created_at: str,
        batch_seqs: dict[str, int],
    ) -> tuple[list[_Row], list[RecordedEvent]]:
        """Check every stream of the item and compute its rows and hashes; writes nothing."""
        seqs: dict[str, int] = {}
        rows: list[_Row] = []
        position, previous = head_position, head_hash
        for request in item:
            last = seqs.get(request.stream)
            if last is None:
                last = batch_seqs.get(request.stream)
            if last is None:
                last = self._last_seq(request.stream)
            if request.expected_seq is not None and request.expected_seq != last:
                raise ConcurrencyError(request.stream, request.expected_seq, last)
            for new in request.events:
                last += 1
                position += 1
                try:
                    data = new.data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise StorageError(f"event data is not UTF-8 JSON: {exc}") from exc
                digest = chain_hash(
                    previous,
                    canonical_bytes(position, request.stream, last, new.type, data, created_at),
                )
                previous = digest
                rows.append((position, request.stream, last, new.type, data, created_at, digest))
            seqs[request.stream] = last
        return rows, [RecordedEvent(*row) for row in rows]

    def _write(self, rows: list[_Row], events: list[RecordedEvent]) -> None:
        conn = self._conn
        conn.executemany(_INSERT, rows)
        for event in events:
            for projection in self._projections:
                projection.apply(conn, event)

    def probe(self) -> None:
        """Commit a transaction that writes a page but changes nothing (the header's
        ``user_version``, set to itself): raises while the database cannot write."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise _store_error(exc) from exc

    # -- helpers --------------------------------------------------------------------------

    def _head(self) -> tuple[int, str]:
        row = self._conn.execute(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
        ).fetchone()
        return (row[0], row[1]) if row else (0, GENESIS_HASH)

    def _last_seq(self, stream: str) -> int:
        cached = self._seq_cache.get(stream)
        if cached is not None:
            return cached
        row = self._conn.execute(
            "SELECT seq FROM events WHERE stream = ? ORDER BY seq DESC LIMIT 1", (stream,)
        ).fetchone()
        return row[0] if row else 0

    def _catch_up_projections(self, head_position: int) -> None:
        """Apply events a projection has not seen yet (written by a process without it)."""
        if not self._projections:
            return
        conn = self._conn
        checkpoints = dict(conn.execute("SELECT name, position FROM projection_checkpoints"))
        for projection in self._projections:
            done = checkpoints.get(projection.name, 0)
            if done >= head_position:
                continue
            for event in iter_events(conn, done):
                projection.apply(conn, event)
            conn.execute(
                "UPDATE projection_checkpoints SET position = ? WHERE name = ?",
                (head_position, projection.name),
            )


def _split_script(script: str) -> list[str]:
    """Split our own DDL into statements (``executescript`` would commit our transaction)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return [s for s in statements if s]
