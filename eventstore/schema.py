"""SQLite schema of the log and the connection settings every connection uses."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from eventstore.model import RecordedEvent

__all__ = ["EVENT_COLUMNS", "SCHEMA", "configure", "connect", "iter_events"]

EVENT_COLUMNS = "position, stream, seq, type, data, created_at, hash"

# The log is one plain table so an auditor can read it with the sqlite3 shell. Append-only is
# enforced by the database itself (docs/architecture.md, "Invariants"): the triggers abort any
# UPDATE or DELETE, whoever issues it.
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position   INTEGER PRIMARY KEY,
    stream     TEXT    NOT NULL,
    seq        INTEGER NOT NULL CHECK (seq >= 1),
    type       TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    UNIQUE (stream, seq)
);
CREATE TRIGGER IF NOT EXISTS events_append_only_update
BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is append-only: UPDATE is not allowed');
END;
CREATE TRIGGER IF NOT EXISTS events_append_only_delete
BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is append-only: DELETE is not allowed');
END;
-- INSERT OR REPLACE deletes the row it conflicts with without firing the DELETE trigger
-- (unless recursive_triggers is on, which is per connection): refuse it here.
CREATE TRIGGER IF NOT EXISTS events_append_only_replace
BEFORE INSERT ON events
WHEN EXISTS (SELECT 1 FROM events WHERE position = NEW.position)
    OR EXISTS (SELECT 1 FROM events WHERE stream = NEW.stream AND seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'events is append-only: an existing event cannot be replaced');
END;
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
);
"""


def configure(conn: sqlite3.Connection, synchronous: str = "FULL") -> None:
    """WAL for concurrent readers, a busy timeout for other processes' write locks."""
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = OFF")


def connect(path: str, synchronous: str = "FULL") -> sqlite3.Connection:
    """A stdlib connection in autocommit mode (transactions are explicit) with our settings."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    configure(conn, synchronous)
    return conn


def iter_events(
    conn: sqlite3.Connection, after_position: int = 0, batch: int = 5000
) -> Iterator[RecordedEvent]:
    """Every event after ``after_position`` in position order, fetched in batches (so the
    caller may write on the same connection between them)."""
    while True:
        rows = conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
            (after_position, batch),
        ).fetchall()
        if not rows:
            return
        for row in rows:
            yield RecordedEvent(*row)
        after_position = rows[-1][0]
