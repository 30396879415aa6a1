"""Threads and their messages (stream ``thread-<id>``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventstore import RecordedEvent, SqlConnection
from projections.base import Decoded, Handler, RowCache, TableProjection
from runs.events import (
    DomainEvent,
    MessageAdded,
    RunCancelled,
    RunCompleted,
    RunFailed,
    ThreadCreated,
    ThreadRunStarted,
    run_id_of,
)

__all__ = ["MESSAGE_COLUMNS", "ThreadsProjection", "message_row", "thread_row"]

_THREAD_COLUMNS = (
    "thread_id",
    "org_id",
    "created_by_user_id",
    "title",
    "created_at",
    "active_run_id",
    "version",
)
_ACTIVE, _VERSION = 5, 6
#: The messages table's columns, in order (``message_row``).
MESSAGE_COLUMNS = (
    "message_id",
    "thread_id",
    "org_id",
    "role",
    "content",
    "created_by_user_id",
    "run_id",
    "created_at",
    "position",
)
_ENDS = frozenset({RunCompleted.TYPE, RunFailed.TYPE, RunCancelled.TYPE})


class ThreadsProjection(TableProjection):
    """``version`` is the thread stream's last seq: the ``expected_seq`` of the next append."""

    name = "threads"
    rebuild_cost = 5
    tables: tuple[str, ...] = ("threads", "messages")
    ddl = """
    CREATE TABLE IF NOT EXISTS threads (
        thread_id          TEXT PRIMARY KEY,
        org_id             TEXT NOT NULL,
        created_by_user_id TEXT NOT NULL,
        title              TEXT,
        created_at         TEXT NOT NULL,
        active_run_id      TEXT,
        version            INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS threads_by_org ON threads (org_id, thread_id);
    CREATE INDEX IF NOT EXISTS threads_by_active_run ON threads (active_run_id);
    CREATE TABLE IF NOT EXISTS messages (
        message_id         TEXT PRIMARY KEY,
        thread_id          TEXT NOT NULL,
        org_id             TEXT NOT NULL,
        role               TEXT NOT NULL,
        content            TEXT NOT NULL,
        created_by_user_id TEXT,
        run_id             TEXT,
        created_at         TEXT NOT NULL,
        position           INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS messages_by_thread ON messages (thread_id, position);
    """

    def handlers(self) -> dict[type[DomainEvent], Handler]:
        return {
            ThreadCreated: self._thread_created,
            MessageAdded: self._message_added,
            ThreadRunStarted: self._run_started,
            RunCompleted: self._run_ended,
            RunFailed: self._run_ended,
            RunCancelled: self._run_ended,
        }

    def apply_many(self, conn: SqlConnection, events: Sequence[Decoded]) -> None:
        """The handlers below, on the chunk's threads in memory (``TableProjection``)."""
        types = self.event_types
        events = [pair for pair in events if pair[0].type in types]
        threads = RowCache("threads", _THREAD_COLUMNS)
        ids: set[str] = set()
        ended: set[str] = set()
        for r, e in events:
            if isinstance(e, ThreadCreated | MessageAdded):
                ids.add(e.thread_id)
            elif isinstance(e, ThreadRunStarted):
                ids.add(r.stream.removeprefix("thread-"))
            else:
                ended.add(run_id_of(r.stream))
        threads.absent(e.thread_id for _, e in events if isinstance(e, ThreadCreated))
        threads.load(conn, ids)
        threads.load(conn, ended, column="active_run_id")
        # The threads each run holds, of those read or written here: every thread whose
        # active run ends in this chunk was read above, by its active run.
        holding: dict[str, set[str]] = {}
        for thread_id, row in threads.items():
            if row is not None and row[_ACTIVE] is not None:
                holding.setdefault(row[_ACTIVE], set()).add(thread_id)
        messages: list[tuple[Any, ...]] = []
        get = threads.rows.get
        for r, e in events:
            if isinstance(e, MessageAdded):
                messages.append(message_row(e, r))
                row = get(e.thread_id)
                if row is not None:
                    row[_VERSION] = r.seq
            elif isinstance(e, ThreadCreated):
                if get(e.thread_id) is not None:
                    raise ValueError(f"thread {e.thread_id} created twice")
                threads.put(list(thread_row(e, r)))
            elif isinstance(e, ThreadRunStarted):
                thread_id = r.stream.removeprefix("thread-")
                row = get(thread_id)
                if row is not None:
                    if row[_ACTIVE] is not None:
                        holding[row[_ACTIVE]].discard(thread_id)
                    row[_ACTIVE] = e.run_id
                    row[_VERSION] = r.seq
                    holding.setdefault(e.run_id, set()).add(thread_id)
            else:
                for thread_id in holding.pop(run_id_of(r.stream), ()):
                    row = get(thread_id)
                    assert row is not None
                    row[_ACTIVE] = None
        threads.flush(conn)
        if messages:
            conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", messages)

    @staticmethod
    def _thread_created(conn: SqlConnection, e: ThreadCreated, r: RecordedEvent) -> None:
        conn.execute("INSERT INTO threads VALUES (?, ?, ?, ?, ?, ?, ?)", thread_row(e, r))

    @staticmethod
    def _message_added(conn: SqlConnection, e: MessageAdded, r: RecordedEvent) -> None:
        conn.execute("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", message_row(e, r))
        conn.execute("UPDATE threads SET version = ? WHERE thread_id = ?", (r.seq, e.thread_id))

    @staticmethod
    def _run_started(conn: SqlConnection, e: ThreadRunStarted, r: RecordedEvent) -> None:
        conn.execute(
            "UPDATE threads SET active_run_id = ?, version = ? WHERE thread_id = ?",
            (e.run_id, r.seq, r.stream.removeprefix("thread-")),
        )

    @staticmethod
    def _run_ended(conn: SqlConnection, e: DomainEvent, r: RecordedEvent) -> None:
        # The thread is free again the moment its run is terminal.
        conn.execute(
            "UPDATE threads SET active_run_id = NULL WHERE active_run_id = ?",
            (run_id_of(r.stream),),
        )


# One row shape per table, for the per-event handlers and the bulk path alike.


def thread_row(e: ThreadCreated, r: RecordedEvent) -> tuple[Any, ...]:
    """A new thread: no active run, version = the event's seq."""
    return (e.thread_id, e.org_id, e.created_by_user_id, e.title, r.created_at, None, r.seq)


def message_row(e: MessageAdded, r: RecordedEvent) -> tuple[Any, ...]:
    return (
        e.message_id,
        e.thread_id,
        e.org_id,
        e.role,
        e.content,
        e.created_by_user_id,
        e.run_id,
        r.created_at,
        r.position,
    )
