"""SQLite schema of the log, the connection settings, and the schema version both backends keep."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING

from eventstore.errors import SchemaVersionError
from eventstore.model import RecordedEvent

if TYPE_CHECKING:
    from eventstore.sql import Database, SqlConnection

__all__ = [
    "EVENT_COLUMNS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "configure",
    "connect",
    "ensure_schema",
    "iter_events",
    "schema_version",
    "split_script",
]

EVENT_COLUMNS = "position, stream, seq, type, data, created_at, hash"

#: The layout of the log and checkpoint tables this runlog writes. Recorded in the database
#: (table ``runlog_schema``); a runlog refuses a database recorded with a newer version, and
#: upgrades an older one in :func:`ensure_schema` (none so far: 1 is the first version).
SCHEMA_VERSION = 1

# The log is one plain table so an auditor can read it with the sqlite3 shell. Append-only is
# enforced by the database itself: the triggers abort any UPDATE or DELETE, whoever issues it.
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

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS runlog_schema ("
    " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
)


def schema_version(db: SqlConnection) -> int | None:
    """The version recorded in the database (None: not recorded)."""
    row = db.fetch_one("SELECT version FROM runlog_schema WHERE id = 1")
    return None if row is None else int(row[0])


def ensure_schema(db: Database) -> None:
    """Inside a write transaction: refuse a newer schema, then create or upgrade to ours."""
    db.execute_ddl(_VERSION_TABLE)
    recorded = schema_version(db)
    if recorded is not None and recorded > SCHEMA_VERSION:
        raise SchemaVersionError(recorded, SCHEMA_VERSION)
    db.create_log_schema()
    # A log made before versions were recorded has exactly the layout of version 1.
    db.execute(
        "INSERT INTO runlog_schema (id, version) VALUES (1, ?)"
        " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        (SCHEMA_VERSION,),
    )


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
    db: SqlConnection, after_position: int = 0, batch: int = 5000
) -> Iterator[RecordedEvent]:
    """Every event after ``after_position`` in position order, fetched in batches (so the
    caller may write on the same connection between them)."""
    while True:
        rows = db.fetch_all(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
            (after_position, batch),
        )
        if not rows:
            return
        for row in rows:
            yield RecordedEvent(*row)
        after_position = rows[-1][0]


def split_script(script: str) -> list[str]:
    """Split our own DDL into statements (``executescript`` would commit our transaction)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return [s for s in statements if s]
