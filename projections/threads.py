"""Threads and their messages (stream ``thread-<id>``)."""

from __future__ import annotations

from eventstore import RecordedEvent, SqlConnection
from projections.base import Handler, TableProjection
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

__all__ = ["ThreadsProjection"]


class ThreadsProjection(TableProjection):
    """``version`` is the thread stream's last seq: the ``expected_seq`` of the next append."""

    name = "threads"
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

    @staticmethod
    def _thread_created(conn: SqlConnection, e: ThreadCreated, r: RecordedEvent) -> None:
        conn.execute(
            "INSERT INTO threads VALUES (?, ?, ?, ?, ?, NULL, ?)",
            (e.thread_id, e.org_id, e.created_by_user_id, e.title, r.created_at, r.seq),
        )

    @staticmethod
    def _message_added(conn: SqlConnection, e: MessageAdded, r: RecordedEvent) -> None:
        conn.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                e.message_id,
                e.thread_id,
                e.org_id,
                e.role,
                e.content,
                e.created_by_user_id,
                e.run_id,
                r.created_at,
                r.position,
            ),
        )
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
