"""What every backend's store shares: the group-commit writer loop, appends, live subscribe.

A backend supplies a synchronous :class:`eventstore.sql.Database` for the writer thread (where
:class:`eventstore.writer.BatchWriter` and the projections run) and its own async reads. A
backend whose statements run in-process (SQLite) may have small batches written from the event
loop, their commit alone on the writer thread (``_loop_batch_events``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import structlog

from eventstore.errors import EventStoreError, StorageError, StorageUnavailable, StoreClosedError
from eventstore.inbox import Inbox
from eventstore.live import Deliver, LiveHub
from eventstore.model import AppendRequest, NewEvent, RecordedEvent, WireRow, utc_now
from eventstore.projection import Projection
from eventstore.sql import Database
from eventstore.verify import VerifyReport, verify_database
from eventstore.worker import WorkerThread
from eventstore.writer import BatchWriter, Outcome

__all__ = ["MAX_BATCH", "CommitObserver", "GroupCommitStore"]

#: Called on the event loop after each commit with the events it recorded (possibly none, when
#: every append of the batch was refused) and the seconds the batch took on the writer thread.
CommitObserver = Callable[[Sequence[RecordedEvent], float], None]

log = structlog.get_logger("runlog.store")

#: Most append requests committed in one transaction.
MAX_BATCH = 1000
_STOP = object()


class _Pending:
    __slots__ = ("future", "requests")

    def __init__(self, requests: Sequence[AppendRequest], future: asyncio.Future[Any]) -> None:
        self.requests = requests
        self.future = future


class _Probe:
    """A probe of the database (:meth:`GroupCommitStore.check_writable`), queued to the writer
    task like an append: whatever uses the write connection goes through that one task, so a
    probe on the writer thread never meets a batch the task writes from the event loop."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future


class GroupCommitStore:
    """Base of the backends' stores. Subclasses implement the ``_`` hooks and the reads."""

    #: Where the log lives (a path or a URL), for messages.
    location: str
    #: Most events in a batch written from the event loop, with only its commit (the write to
    #: disk and the fsync) handed to the writer thread: on a loaded server, the batch's many
    #: short statements on the writer thread each gave up the GIL to the loop and waited to
    #: get it back. 0: every batch goes to the writer thread whole. Only for a backend whose
    #: statements take microseconds and which implements :meth:`_try_begin_write`; a larger
    #: batch, a batch after another process's commit (which may have to be caught up with) and
    #: one that would wait for the write lock go to the writer thread.
    _loop_batch_events = 0

    def __init__(self, location: str, projections: Sequence[Projection] = ()) -> None:
        self.location = location
        self.projections = tuple(projections)
        self._thread = WorkerThread("runlog-writer")
        self._write_db: Database | None = None
        self._writer: BatchWriter | None = None
        self._inbox = Inbox()
        self._writer_task: asyncio.Task[None] | None = None
        self._closed = False
        self.live = LiveHub()
        #: Who wants to know about commits (the service's metrics); the store keeps no stats.
        self.commit_observers: list[CommitObserver] = []
        #: Why the last commit failed while the database could not write (disk full, I/O
        #: error, connection lost); ``None`` once a commit succeeds again.
        self.write_fault: str | None = None
        #: Called when the store lost its wake-ups from other processes and has them again
        #: (PostgreSQL's listening connection): every live subscriber was woken to read again.
        self.reconnect_observers: list[Callable[[], None]] = []
        # The last position handed to live subscribers. Events after it are this process's
        # commits (published as they commit) or other processes' (read from the log when the
        # backend says there is something to read): each is published once, in position order.
        self._published = 0
        #: The last position this process committed (set on the writer thread): everything up
        #: to it is published by the writer path, which reads the log first after a gap.
        self._written = 0
        #: Set while no batch is being committed (cleared from the writer task's hand-off to
        #: the writer thread until the batch's events were published).
        self._between_batches = asyncio.Event()
        self._between_batches.set()

    # -- hooks ------------------------------------------------------------------------------

    def _connect(self) -> Database:
        """A new synchronous connection (called on a worker thread)."""
        raise NotImplementedError

    def _try_begin_write(self) -> bool:
        """Begin the write transaction if that needs no waiting, else return False having
        begun nothing (on the event loop; for ``_loop_batch_events``)."""
        raise NotImplementedError

    async def _open_readers(self) -> None:
        raise NotImplementedError

    async def _close_readers(self) -> None:
        raise NotImplementedError

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query (``?`` placeholders) for the projections' queries."""
        raise NotImplementedError

    async def _read_log(self, sql: str, params: tuple[Any, ...]) -> list[RecordedEvent]:
        raise NotImplementedError

    def _open_failure(self, exc: Exception) -> str:
        """Why the log could not be opened, for the error message."""
        return repr(exc)

    def _committed(self, events: list[RecordedEvent]) -> None:
        """Hand a commit's events to live subscribers (called on the event loop, after the
        commit)."""
        self._publish(events)

    def _publish_from_log(self) -> None:
        """Publish what the log holds after :attr:`_published` (another process's events),
        now or soon: SQLite reads at once, PostgreSQL wakes its reader task."""

    # -- live: this process's commits and other processes' ----------------------------------

    def _publish(self, committed: list[RecordedEvent]) -> None:
        """Hand this process's committed events to live subscribers once each, in position
        order. When another process committed in between, the log is read first (and this
        commit's events with it)."""
        fresh = [event for event in committed if event.position > self._published]
        if not fresh:
            return
        if fresh[0].position != self._published + 1:
            self._publish_from_log()
            return
        self._published = fresh[-1].position
        self.live.publish(fresh)

    def _publish_read(self, events: list[RecordedEvent]) -> None:
        """Publish ``events``, read from the log after some position at or before
        :attr:`_published`: only those still unpublished, which follow it without a gap (the
        log's positions are gapless and whatever was published meanwhile was contiguous)."""
        fresh = [event for event in events if event.position > self._published]
        if fresh and fresh[0].position == self._published + 1:
            self._published = fresh[-1].position
            self.live.publish(fresh)

    # -- life cycle -------------------------------------------------------------------------

    async def _start(self) -> None:
        try:
            self._write_db = await self._thread.call(self._connect)
            self._writer = BatchWriter(self._write_db, self.projections)
            await self._thread.call(self._writer.create_schema)
            await self._open_readers()
        except BaseException as exc:
            await self._shutdown_connections()
            if isinstance(exc, EventStoreError) or not isinstance(exc, Exception):
                raise
            raise StorageError(
                f"cannot open the log at {self.location} for writing: {self._open_failure(exc)}"
            ) from exc
        self._writer_task = asyncio.create_task(self._run_writer(), name="runlog-writer")

    async def close(self) -> None:
        """Commit what is queued, then close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._writer_task is not None:
            self._inbox.put(_STOP)
            await self._writer_task
        self.live.wake_all()
        await self._shutdown_connections()

    async def _shutdown_connections(self) -> None:
        await self._close_readers()
        if self._write_db is not None:
            db = self._write_db
            self._write_db = None
            await self._thread.call(db.close)
        self._thread.stop()

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
        return await self.submit_many(requests)

    def submit_many(self, requests: Sequence[AppendRequest]) -> asyncio.Future[list[RecordedEvent]]:
        """:meth:`append_many`, handed to the writer now: the future is its outcome. The
        append goes ahead whatever becomes of the caller, so a caller that must not lose it
        to a cancellation shields the future (no task needed)."""
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
        self._inbox.put(_Pending(list(requests), future))
        return future

    async def _run_writer(self) -> None:
        writer = self._writer
        assert writer is not None
        inbox = self._inbox
        items = inbox.items
        stopping = False
        while not stopping:
            first = await inbox.get()
            if first is _STOP:
                break
            if type(first) is _Probe:
                await self._probe(writer, first)
                continue
            batch: list[_Pending] = [first]
            probe: _Probe | None = None
            while len(batch) < MAX_BATCH and items:
                item = items.popleft()
                if item is _STOP:
                    stopping = True
                    break
                if type(item) is _Probe:
                    probe = item  # after this batch
                    break
                batch.append(item)
            try:
                await self._commit_pending(writer, batch)
            except asyncio.CancelledError:
                if probe is not None and not probe.future.done():
                    probe.future.set_exception(StoreClosedError("the event store is closed"))
                raise
            # Whatever became of the batch, the probe taken off the queue with it runs now.
            if probe is not None:
                await self._probe(writer, probe)
        # Fail whatever arrived after the stop marker.
        while items:
            item = items.popleft()
            if item is not _STOP and not item.future.done():
                item.future.set_exception(StoreClosedError("the event store is closed"))

    async def _commit_pending(self, writer: BatchWriter, batch: list[_Pending]) -> None:
        """Commit ``batch``, settle every append's future and publish what was committed. A
        failure fails the batch's appends and ends here, but for a cancellation."""
        started = time.perf_counter()
        self._between_batches.clear()
        try:
            outcomes = await self._write(writer, [pending.requests for pending in batch], utc_now())
        except BaseException as exc:
            self._between_batches.set()
            error = exc if isinstance(exc, EventStoreError) else StorageError(repr(exc))
            if isinstance(error, StorageUnavailable):
                self._fault(error)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
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
        # still be lost.
        if committed:
            self.write_fault = None
        self._committed(committed)
        self._between_batches.set()
        seconds = time.perf_counter() - started
        for observe in self.commit_observers:
            try:
                observe(committed, seconds)
            except Exception:  # noqa: S112 - an observer must never stop the writer
                continue

    async def _probe(self, writer: BatchWriter, probe: _Probe) -> None:
        try:
            await self._thread.call(writer.probe)
        except BaseException as exc:
            if not probe.future.done():
                probe.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if not probe.future.done():
                probe.future.set_result(None)

    async def _write(
        self, writer: BatchWriter, batches: list[Sequence[AppendRequest]], now: str
    ) -> list[Outcome]:
        """Commit a batch: written here and committed on the writer thread when the backend
        and the batch allow (``_loop_batch_events``), else all of it on the writer thread."""
        limit = self._loop_batch_events
        if limit and sum(len(r.events) for item in batches for r in item) <= limit:
            outcomes = writer.write_batch(batches, now, self._try_begin_write)
            if outcomes is not None:
                # Once the batch is written its commit goes ahead, even should this task be
                # cancelled, so the connection is never left inside the transaction.
                await self._thread.call_anyway(self._commit_written, writer, outcomes)
                return outcomes
        return await self._thread.call(self._commit_batch, writer, batches, now)

    def _commit_batch(
        self, writer: BatchWriter, batches: list[Sequence[AppendRequest]], now: str
    ) -> list[Outcome]:
        """On the writer thread: commit, and note the last position written at once, before
        the event loop hears of the commit (PostgreSQL's notification of it may come first:
        the loop then knows these events are about to be published)."""
        outcomes = writer.commit_batch(batches, now)
        self._note_written(outcomes)
        return outcomes

    def _commit_written(self, writer: BatchWriter, outcomes: list[Outcome]) -> None:
        """On the writer thread: commit what the event loop wrote; as :meth:`_commit_batch`."""
        writer.commit_written()
        self._note_written(outcomes)

    def _note_written(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if isinstance(outcome, list) and outcome:
                self._written = max(self._written, outcome[-1].position)

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
        probe = _Probe(asyncio.get_running_loop().create_future())
        self._inbox.put(probe)
        try:
            await probe.future
        except StorageUnavailable as exc:
            self.write_fault = str(exc)
        else:
            log.info("store.write_recovered")
            self.write_fault = None
        return self.write_fault

    # -- reads ------------------------------------------------------------------------------

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def read_stream(
        self, stream: str, after_seq: int = 0, limit: int = 500
    ) -> list[RecordedEvent]:
        """Up to ``limit`` events of ``stream`` with seq > ``after_seq``, in seq order."""
        return await self._read_log(_READ_STREAM, (stream, after_seq, limit))

    async def read_stream_wire(
        self, stream: str, after_seq: int = 0, limit: int = 500
    ) -> list[WireRow]:
        """The events :meth:`read_stream` would give, as :data:`WireRow` tuples, for code
        that copies them onto a wire (SSE catch-up): no event object per row and no text
        decoded only to be encoded again. The database hands over the bytes it stores."""
        return await self.fetch_all(self._read_stream_wire_sql, (stream, after_seq, limit))

    #: The backend's query for :meth:`read_stream_wire` (``?`` placeholders).
    _read_stream_wire_sql = ""

    async def read_all(self, after_position: int = 0, limit: int = 500) -> list[RecordedEvent]:
        """Up to ``limit`` events with position > ``after_position``, in position order."""
        return await self._read_log(_READ_ALL, (after_position, limit))

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
        """Events of ``stream`` after ``after_seq``: the log first, then live as they commit
        (:meth:`subscribe_batches`, one event at a time). Close the iterator (``aclose`` or
        ``contextlib.aclosing``) to release the subscription at once."""
        batches = self.subscribe_batches(stream, after_seq, batch_limit)
        try:
            async for batch in batches:
                for event in batch:
                    yield event
        finally:
            await batches.aclose()

    async def subscribe_batches(
        self,
        stream: str,
        after_seq: int = 0,
        batch_limit: int = 500,
        deliver: Deliver | None = None,
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        """:meth:`subscribe` as lists of consecutive events (at most ``batch_limit``, never
        empty): whatever is there when the subscriber looks, so a writer can send a commit's
        events at once.

        Catch-up and live tail are one loop over the same cursor, so there is no hand-over to
        get wrong: whatever committed after the cursor is read (from the shared in-memory
        window when it covers the cursor, else from the log, unless nothing published of the
        stream is after the cursor: :meth:`LiveHub.published_up_to`), and only when nothing
        is left does the subscriber wait for the next commit. The wait is armed *before* the
        read, so a commit that lands during the read is never missed. Close the iterator to
        release the subscription at once.

        With ``deliver``, a subscriber that has caught up leaves it on the stream's tail
        (eventstore/live.py) and the events it takes are not yielded: only what it could not
        take is, read from its cursor as above.
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
                    if self.live.published_up_to(stream, cursor):
                        batch = []  # nothing past the cursor yet: it comes to the tail
                    else:
                        batch = await self.read_stream(stream, cursor, batch_limit)
                if batch:
                    cursor = batch[-1].seq
                    yield batch
                    continue
                if deliver is None:
                    await changed.wait()
                elif tail.changed is changed:
                    # Nothing was published since the read began: the sink misses nothing.
                    cursor = await tail.follow(cursor, deliver)
        finally:
            self.live.release(stream, tail)

    # -- audit ------------------------------------------------------------------------------

    async def verify(self) -> VerifyReport:
        """Walk the whole log and report the first position that breaks the chain, if any."""
        if self._closed:
            raise StoreClosedError("the event store is closed")

        def run() -> VerifyReport:
            db = self._connect()
            try:
                return verify_database(db)
            finally:
                db.close()

        try:
            return await asyncio.to_thread(run)
        except EventStoreError:
            raise
        except Exception as exc:
            raise StorageError(f"verify failed: {exc}") from exc


_COLUMNS = "position, stream, seq, type, data, created_at, hash"
_READ_STREAM = f"SELECT {_COLUMNS} FROM events WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?"
_READ_ALL = f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
