"""SQLite specifics: the file an auditor opens, append-only triggers, tamper evidence."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from eventstore import (
    NewEvent,
    RecordedEvent,
    SQLiteEventStore,
    canonical_bytes,
    chain_hash,
)

EVENTS = 30


@contextlib.contextmanager
def raw(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A plain stdlib connection, as an auditor (or an attacker) would open the file."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def drop_triggers(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("DROP TRIGGER events_append_only_delete")


def row(conn: sqlite3.Connection, position: int) -> tuple[object, ...]:
    return conn.execute("SELECT * FROM events WHERE position = ?", (position,)).fetchone()


@pytest.fixture
async def filled(sqlite_store: SQLiteEventStore) -> SQLiteEventStore:
    """A store with EVENTS events over three streams, every payload distinct."""
    for i in range(EVENTS):
        payload = msgspec.json.encode({"i": i, "word": f"abcdef-{i}", "ü": "ß"})
        await sqlite_store.append("abc"[i % 3], [NewEvent(f"Type{i % 4}", payload)])
    assert (await sqlite_store.verify()).ok
    return sqlite_store


# -- the file ------------------------------------------------------------------------------


async def test_file_is_in_wal_mode(filled: SQLiteEventStore, db_path: Path) -> None:
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db_path.with_name(db_path.name + "-wal").exists()


async def test_auditor_reads_the_log_with_plain_sqlite3(
    filled: SQLiteEventStore, db_path: Path
) -> None:
    with raw(db_path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(events)")]
        rows = conn.execute("SELECT * FROM events ORDER BY position").fetchall()

    assert columns == ["position", "stream", "seq", "type", "data", "created_at", "hash"]
    assert [RecordedEvent(*r) for r in rows] == await filled.read_all(0, 1000)
    assert msgspec.json.decode(rows[4][4]) == {"i": 4, "word": "abcdef-4", "ü": "ß"}


# -- append-only ---------------------------------------------------------------------------


def _assert_append_only(exc: sqlite3.Error) -> None:
    assert isinstance(exc, sqlite3.IntegrityError | sqlite3.OperationalError)
    assert "append-only" in str(exc)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET data = '{}' WHERE position = 5",
        "UPDATE events SET hash = upper(hash)",
        "DELETE FROM events WHERE position = 5",
        "DELETE FROM events",
        "INSERT INTO events SELECT * FROM events WHERE position = 5"
        " ON CONFLICT(position) DO UPDATE SET data = '{}'",
    ],
)
async def test_update_and_delete_are_refused_by_the_database(
    filled: SQLiteEventStore, db_path: Path, sql: str
) -> None:
    with raw(db_path) as conn:
        before = conn.execute("SELECT * FROM events ORDER BY position").fetchall()
        with pytest.raises(sqlite3.Error) as info:
            conn.execute(sql)
        _assert_append_only(info.value)
        assert conn.execute("SELECT * FROM events ORDER BY position").fetchall() == before
    assert (await filled.verify()).ok


@pytest.mark.parametrize(
    "sql",
    [
        # REPLACE deletes the conflicting row without firing DELETE triggers (SQLite runs
        # them for REPLACE only with PRAGMA recursive_triggers, which is off by default).
        "INSERT OR REPLACE INTO events SELECT position, stream, seq, type, '{\"forged\":1}',"
        " created_at, hash FROM events WHERE position = 5",
        "REPLACE INTO events SELECT position + 1000, stream, seq, type, data, created_at,"
        " hash FROM events WHERE position = 5",
    ],
    ids=["same-position", "same-stream-seq"],
)
async def test_replace_is_refused_by_the_database(
    filled: SQLiteEventStore, db_path: Path, sql: str
) -> None:
    with raw(db_path) as conn:
        before = conn.execute("SELECT * FROM events ORDER BY position").fetchall()
        try:
            conn.execute(sql)
        except sqlite3.Error as exc:
            _assert_append_only(exc)
        after = conn.execute("SELECT * FROM events ORDER BY position").fetchall()
    assert after == before, "INSERT OR REPLACE rewrote a row of the append-only log"


# -- tamper evidence -----------------------------------------------------------------------


def _flip_one_char(value: str) -> str:
    index = value.index("abcdef") + 2  # the "c"
    return value[:index] + "d" + value[index + 1 :]


@pytest.mark.parametrize("position", [1, 13, EVENTS])
async def test_one_changed_byte_of_data_is_found_at_its_position(
    filled: SQLiteEventStore, db_path: Path, position: int
) -> None:
    with raw(db_path) as conn:
        drop_triggers(conn)
        (data,) = conn.execute("SELECT data FROM events WHERE position = ?", (position,)).fetchone()
        forged = _flip_one_char(data)
        assert len(forged.encode()) == len(data.encode())
        assert sum(a != b for a, b in zip(forged.encode(), data.encode(), strict=True)) == 1
        conn.execute("UPDATE events SET data = ? WHERE position = ?", (forged, position))

    report = await filled.verify()

    assert report.first_bad_position == position
    assert not report.ok
    assert report.head_position == position - 1
    assert report.problem


@pytest.mark.parametrize(
    ("column", "expression"),
    [
        ("type", "type || 'x'"),
        ("created_at", "replace(created_at, 'Z', '1Z')"),
        ("hash", "substr(hash, 2) || substr(hash, 1, 1)"),
        ("stream", "'zzz'"),
        ("seq", "seq + 1000"),
    ],
)
async def test_any_changed_field_is_found_at_its_position(
    filled: SQLiteEventStore, db_path: Path, column: str, expression: str
) -> None:
    with raw(db_path) as conn:
        drop_triggers(conn)
        conn.execute(f"UPDATE events SET {column} = {expression} WHERE position = 17")

    assert (await filled.verify()).first_bad_position == 17


@pytest.mark.parametrize("position", [1, 9, EVENTS - 1])
async def test_deleted_row_is_found_at_its_position(
    filled: SQLiteEventStore, db_path: Path, position: int
) -> None:
    with raw(db_path) as conn:
        drop_triggers(conn)
        conn.execute("DELETE FROM events WHERE position = ?", (position,))

    report = await filled.verify()

    assert report.first_bad_position == position
    assert report.events == position - 1


async def test_swapped_pair_is_found_at_the_first_of_the_two(
    filled: SQLiteEventStore, db_path: Path
) -> None:
    with raw(db_path) as conn:
        drop_triggers(conn)
        data = dict(conn.execute("SELECT position, data FROM events WHERE position IN (8, 21)"))
        conn.execute("BEGIN")
        conn.execute("UPDATE events SET data = ? WHERE position = 8", (data[21],))
        conn.execute("UPDATE events SET data = ? WHERE position = 21", (data[8],))
        conn.execute("COMMIT")

    assert (await filled.verify()).first_bad_position == 8


async def test_swapped_rows_are_found_at_the_first_of_the_two(
    filled: SQLiteEventStore, db_path: Path
) -> None:
    # Swap whole rows (every column but the position): the order of the log changed.
    with raw(db_path) as conn:
        drop_triggers(conn)
        a, b = row(conn, 11), row(conn, 12)
        conn.execute("BEGIN")
        conn.execute("DELETE FROM events WHERE position IN (11, 12)")
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", (11, *b[1:]))
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", (12, *a[1:]))
        conn.execute("COMMIT")

    assert (await filled.verify()).first_bad_position == 11


async def test_forgery_with_a_recomputed_hash_is_found_at_the_next_position(
    filled: SQLiteEventStore, db_path: Path
) -> None:
    # The forger rehashes the row they changed, but not the rest of the chain.
    with raw(db_path) as conn:
        drop_triggers(conn)
        (previous,) = conn.execute("SELECT hash FROM events WHERE position = 9").fetchone()
        position, stream, seq, type_, data, created_at, _ = row(conn, 10)
        forged = _flip_one_char(data)
        digest = chain_hash(
            previous, canonical_bytes(position, stream, seq, type_, forged, created_at)
        )
        conn.execute("UPDATE events SET data = ?, hash = ? WHERE position = 10", (forged, digest))

    assert (await filled.verify()).first_bad_position == 11


async def test_store_keeps_working_after_a_failed_raw_write(
    filled: SQLiteEventStore, db_path: Path
) -> None:
    with raw(db_path) as conn, pytest.raises(sqlite3.Error):
        conn.execute("DELETE FROM events WHERE position = 3")

    [event] = await filled.append("a", [NewEvent("T", b"{}")])

    assert event.position == EVENTS + 1
    assert (await filled.verify()).ok
