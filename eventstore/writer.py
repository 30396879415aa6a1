"""The synchronous half of the group-commit writer.

It works the store's one write connection, always from one caller at a time (the store's writer
task). It is the same code on every backend: the engine's differences are behind
:class:`eventstore.sql.Database`. A batch — the head read, every append's concurrency check, the
inserts, the projections and their checkpoint, and the commit — is a single call on the store's
writer thread (:meth:`BatchWriter.commit_batch`), so a batch costs one thread hop and one fsync.
A backend whose statements run in-process (SQLite) may instead write a small batch from the
event loop (:meth:`BatchWriter.write_batch`) and hand only its commit, the disk write and the
fsync, to the thread (:meth:`BatchWriter.commit_written`): see docs/architecture.md, "The log".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from eventstore.errors import (
    AppendRefused,
    ConcurrencyError,
    EventStoreError,
    StorageError,
    StorageUnavailable,
)
from eventstore.model import (
    AppendRequest,
    Cap,
    RecordedEvent,
    canonical_bytes,
    chain_hash,
)
from eventstore.projection import Projection
from eventstore.schema import ensure_schema, iter_events
from eventstore.sql import Database, InsertRefused

__all__ = ["BatchWriter"]

_SEQ_CACHE_LIMIT = 200_000
#: Events written by other processes since our last commit beyond which the seq cache is
#: dropped rather than brought up to date.
_SEQ_REFRESH_LIMIT = 10_000
#: For this many batches after one that found another process's commit, the queries that
#: bring the seq cache and the projections up to date travel with the head's lock.
_SHARED_BATCHES = 16
#: Event types whose projections the writer keeps worked out (BatchWriter._appliers_of).
_APPLIERS_LIMIT = 1024

_CHECKPOINTS = "SELECT name, position FROM projection_checkpoints"

Outcome = list[RecordedEvent] | EventStoreError
_Row = tuple[int, str, int, str, str, str, str]


class _IsolateItems(Exception):
    """A batch's combined write failed: redo it item by item to find whose it was."""


class _NotNow(Exception):
    """:meth:`BatchWriter.write_batch` cannot write this batch without waiting or catching up:
    the transaction was rolled back and nothing was written."""


def _store_error(db: Database, exc: Exception) -> EventStoreError:
    if isinstance(exc, EventStoreError):
        return exc
    error: StorageError
    if isinstance(exc, db.errors) and db.unavailable(exc):
        error = StorageUnavailable(f"the log cannot be written now: {exc}")
    else:
        error = StorageError(f"append failed (a projection, or the database): {exc!r}")
    error.__cause__ = exc
    return error


class BatchWriter:
    """Appends batches of requests in one transaction each, keeping the hash chain."""

    def __init__(self, db: Database, projections: Sequence[Projection]) -> None:
        self._db = db
        self._projections = tuple(projections)
        # The projections that see each event type (``Projection.event_types``), in order.
        self._appliers: dict[str, tuple[Projection, ...]] = {}
        # Last seq of recently written streams. Valid only while no other process has
        # written: every batch compares the head it reads with the head we last committed.
        self._seq_cache: dict[str, int] = {}
        self._cached_head = -1
        # Batches left in which another process is taken to be writing too (_SHARED_BATCHES).
        self._shared = 0
        # What write_batch wrote and commit_written will commit: the last seq of each stream
        # written, and the new head.
        self._held: tuple[dict[str, int], int] | None = None

    # -- set-up ---------------------------------------------------------------------------

    def create_schema(self) -> None:
        db = self._db
        db.begin_schema()
        try:
            ensure_schema(db)
            for projection in self._projections:
                projection.create(db)
                db.execute(
                    "INSERT INTO projection_checkpoints (name, position) VALUES (?, 0)"
                    " ON CONFLICT (name) DO NOTHING",
                    (projection.name,),
                )
            head = db.head()[0]
            self._refuse_cut_tail(head)
            self._catch_up_projections(head)
            db.commit()
        except BaseException:
            db.rollback()
            raise

    def _refuse_cut_tail(self, head: int) -> None:
        """A projection that has applied events the log no longer holds means events were
        removed from the log's end: writing now would reuse their positions."""
        row = self._db.fetch_one(
            "SELECT name, position FROM projection_checkpoints ORDER BY position DESC LIMIT 1"
        )
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

    def write_batch(
        self,
        batch: Sequence[Sequence[AppendRequest]],
        created_at: str,
        begin: Callable[[], bool],
    ) -> list[Outcome] | None:
        """:meth:`commit_batch` up to its commit, for a caller that must not wait (the event
        loop): the outcomes, with the transaction left open for :meth:`commit_written`, which
        must come next on this connection. ``begin`` starts the write transaction if it can at
        once, else returns False.

        ``None`` when the batch is not for this path: the write lock is held elsewhere, another
        process wrote since our last commit (its events may have to be caught up with, however
        many), or the combined write failed (the redo item by item is the writer thread's).
        Nothing was written then; commit the batch with :meth:`commit_batch`. Only for a
        database that refuses rows when they are inserted, not at the commit."""
        if self._shared or self._cached_head < 0:
            return None
        try:
            return self._commit(batch, created_at, isolate=False, begin=begin)
        except (_NotNow, _IsolateItems):
            return None

    def commit_written(self) -> None:
        """Commit what :meth:`write_batch` wrote (on the writer thread: the commit writes to
        disk and waits for it)."""
        held, self._held = self._held, None
        assert held is not None, "commit_written without write_batch"
        try:
            self._db.commit()
        except BaseException as exc:
            self._abandon(exc)
        self._advance(*held)

    def _commit(
        self,
        batch: Sequence[Sequence[AppendRequest]],
        created_at: str,
        *,
        isolate: bool,
        begin: Callable[[], bool] | None = None,
    ) -> list[Outcome]:
        """``begin``: write without waiting (:meth:`write_batch`) and hold the commit."""
        db = self._db
        try:
            if begin is None:
                db.begin_write()
            elif not begin():
                raise _NotNow
            (head_position, head_hash), streams, checkpoints = self._lock_head()
        except db.errors as exc:
            with contextlib.suppress(*db.errors):
                db.rollback()
            if db.unavailable(exc):
                raise StorageUnavailable(f"cannot start a write transaction: {exc}") from exc
            raise StorageError(f"cannot start a write transaction: {exc}") from exc
        if begin is not None and head_position != self._cached_head:
            # Another process wrote since our last commit: the writer thread catches up.
            db.rollback()
            raise _NotNow
        batch_seqs: dict[str, int] = {}  # last seq of each stream written by this batch
        counts: dict[str, int] = {}  # what each cap counts, with this batch's accepted appends
        try:
            if head_position != self._cached_head:
                # Another process wrote since our last commit (or we have not committed since
                # the start or a failure): our seq cache is stale and our projections may have
                # missed its events.
                if self._cached_head >= 0:
                    self._shared = _SHARED_BATCHES
                self._refresh_seq_cache(head_position, streams)
                self._catch_up_projections(head_position, checkpoints)
            elif self._shared:
                self._shared -= 1
            outcomes: list[Outcome] = []
            first_position = head_position + 1
            rows: list[_Row] = []
            events: list[RecordedEvent] = []
            for item in batch:
                try:
                    item_rows, recorded = self._prepare(
                        item, head_position, head_hash, created_at, batch_seqs, not isolate
                    )
                except EventStoreError as exc:
                    outcomes.append(exc)
                    continue
                caps = [r.cap for r in item if r.cap is not None]
                if isolate:
                    db.savepoint("item")
                    try:
                        self._check(caps, counts)
                        self._write(item_rows, recorded)
                    except Exception as exc:
                        db.rollback_to("item")
                        db.release("item")
                        outcomes.append(_store_error(db, exc))
                        continue
                    db.release("item")
                else:
                    try:
                        self._check(caps, counts)
                    except AppendRefused as exc:
                        outcomes.append(exc)
                        continue
                    except Exception as exc:
                        raise _IsolateItems from exc
                    rows.extend(item_rows)
                    events.extend(recorded)
                for cap in caps:
                    counts[cap.key] += 1
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
            if head_position >= first_position:
                db.set_head(head_position, head_hash)
            if self._projections and head_position >= first_position:
                db.set_checkpoints(head_position, [p.name for p in self._projections])
            if begin is not None:
                self._held = (batch_seqs, head_position)
                return outcomes
            try:
                db.commit()
            except InsertRefused as exc:
                if isolate:
                    raise StorageError(f"append failed: {exc}") from exc
                raise _IsolateItems from exc
        except BaseException as exc:
            self._abandon(exc)
        self._advance(batch_seqs, head_position)
        return outcomes

    def _abandon(self, exc: BaseException) -> NoReturn:
        """A write transaction failed: roll it back, forget what may be stale and raise the
        store's error for a database error (anything else as it is)."""
        db = self._db
        self._seq_cache.clear()
        self._cached_head = -1
        if db.in_transaction:
            with contextlib.suppress(*db.errors):
                db.rollback()
        if isinstance(exc, db.errors):
            if db.unavailable(exc):
                raise StorageUnavailable(f"the log cannot be written now: {exc}") from exc
            raise StorageError(f"append failed: {exc}") from exc
        raise exc

    def _advance(self, batch_seqs: dict[str, int], head_position: int) -> None:
        """After a commit: the streams' last seqs and the head are ours to remember."""
        self._seq_cache.update(batch_seqs)
        self._cached_head = head_position
        if len(self._seq_cache) > _SEQ_CACHE_LIMIT:
            self._seq_cache.clear()

    def _prepare(
        self,
        item: Sequence[AppendRequest],
        head_position: int,
        head_hash: str,
        created_at: str,
        batch_seqs: dict[str, int],
        trust_new: bool,
    ) -> tuple[list[_Row], list[RecordedEvent]]:
        """Check every stream of the item and compute its rows and hashes; writes nothing.

        ``trust_new``: a stream we know nothing of that the request expects to be new (seq 0)
        is taken to be new without a query. If it is not, its first row (seq 1) collides with
        the stream's first event in the insert (the log's unique (stream, seq)), and the batch
        is redone item by item, with the query, which refuses the item."""
        seqs: dict[str, int] = {}
        rows: list[_Row] = []
        position, previous = head_position, head_hash
        for request in item:
            last = seqs.get(request.stream)
            if last is None:
                last = batch_seqs.get(request.stream)
            if last is None:
                last = self._seq_cache.get(request.stream)
            if last is None:
                unknown_new = trust_new and request.expected_seq == 0
                last = 0 if unknown_new else self._last_seq(request.stream)
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

    def _check(self, caps: Sequence[Cap], counts: dict[str, int]) -> None:
        """Refuse the item if one of its caps is reached. A cap's count is read once per batch
        (the projections are current: they were caught up when the head was locked) and then
        kept up to date with the batch's own accepted appends."""
        for cap in caps:
            count = counts.get(cap.key)
            if count is None:
                row = self._db.fetch_one(cap.count_sql, cap.params)
                count = counts[cap.key] = int(row[0]) if row and row[0] is not None else 0
            if count >= cap.limit:
                raise AppendRefused(f"{cap.key}: {count} of {cap.limit}", count=count)

    def _write(self, rows: list[_Row], events: list[RecordedEvent]) -> None:
        db = self._db
        db.insert_events(rows)
        appliers = self._appliers
        for event in events:
            these = appliers.get(event.type)
            if these is None:
                these = self._appliers_of(event.type)
            for projection in these:
                projection.apply(db, event)

    def _appliers_of(self, type_: str) -> tuple[Projection, ...]:
        """The projections that see events of ``type_``, kept for the next (the log's event
        types are a handful; past a bound, an odd type is worked out each time)."""
        these = tuple(
            p
            for p in self._projections
            if (types := getattr(p, "event_types", None)) is None or type_ in types
        )
        if len(self._appliers) < _APPLIERS_LIMIT:
            self._appliers[type_] = these
        return these

    def probe(self) -> None:
        """Commit a transaction that changes nothing: raises while the database cannot write."""
        db = self._db
        try:
            db.probe()
        except db.errors as exc:
            raise _store_error(db, exc) from exc

    # -- helpers --------------------------------------------------------------------------

    def _last_seq(self, stream: str) -> int:
        """The stream's last seq as the database has it (the caller looked in the caches)."""
        row = self._db.fetch_one(
            "SELECT seq FROM events WHERE stream = ? ORDER BY seq DESC LIMIT 1", (stream,)
        )
        return int(row[0]) if row else 0

    def _lock_head(
        self,
    ) -> tuple[tuple[int, str], list[tuple[Any, ...]] | None, list[tuple[Any, ...]] | None]:
        """Lock the head and read it. While another process is writing too, the rows that
        :meth:`_refresh_seq_cache` and :meth:`_catch_up_projections` need come with it (on
        PostgreSQL in the same round trip): with two processes taking turns, they are needed
        for every batch, and each round trip under the head's lock holds up the other.
        Returns the head, and those rows when they were read (else None)."""
        db = self._db
        if not self._shared or self._cached_head < 0:
            return db.head(), None, None
        if not self._projections:
            head, (streams,) = db.head_and(self._streams_sql())
            return head, streams, None
        head, (streams, checkpoints) = db.head_and(self._streams_sql(), _CHECKPOINTS)
        return head, streams, checkpoints

    def _streams_sql(self) -> str:
        """The last seq of every stream written since our last commit, up to the refresh
        limit (beyond it the seq cache is dropped anyway). Literals, so that it can travel in
        one simple query with the head's lock: the positions are our own integers."""
        since = self._cached_head
        return (
            f"SELECT stream, max(seq) FROM events WHERE position > {since:d}"
            f" AND position <= {since + _SEQ_REFRESH_LIMIT:d} GROUP BY stream"
        )

    def _refresh_seq_cache(
        self, head_position: int, rows: list[tuple[Any, ...]] | None = None
    ) -> None:
        """Bring the seq cache from our last commit's head to ``head_position``: the last seq
        of each cached stream that the other writers' events touched, in one query (with two
        processes taking turns this is every batch, and a query per stream under the head's
        lock would serialise them), unless ``rows`` already hold its answer. After a long gap
        the cache is dropped instead."""
        if self._cached_head < 0 or head_position - self._cached_head > _SEQ_REFRESH_LIMIT:
            self._seq_cache.clear()
            return
        if rows is None:
            rows = self._db.fetch_all(self._streams_sql())
        cache = self._seq_cache
        for stream, seq in rows:
            if stream in cache:
                cache[stream] = int(seq)

    def _catch_up_projections(
        self, head_position: int, checkpoint_rows: list[tuple[Any, ...]] | None = None
    ) -> None:
        """Apply events a projection has not seen yet (written by a process without it).
        ``checkpoint_rows``: the checkpoints table, when already read."""
        if not self._projections:
            return
        db = self._db
        if checkpoint_rows is None:
            checkpoint_rows = db.fetch_all(_CHECKPOINTS)
        checkpoints = {name: int(position) for name, position in checkpoint_rows}
        for projection in self._projections:
            done = checkpoints.get(projection.name, 0)
            if done >= head_position:
                continue
            for event in iter_events(db, done):
                projection.apply(db, event)
            db.execute(
                "UPDATE projection_checkpoints SET position = ? WHERE name = ?",
                (head_position, projection.name),
            )
