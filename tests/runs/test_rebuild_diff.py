"""``rebuild --check`` on SQLite compares each table inside SQLite, by one join on the primary
key against a copy of the rebuilt tables attached to the log's connection
(``projections.rebuild._same_rows``); only a table found to differ is read into Python. Both
ways must give the same answer: here on small tables with the values where SQL and Python
equality could part (NULLs, 1 and 1.0, text and numbers, NULL keys, duplicates, other
columns)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventstore.sql import SqliteDatabase
from projections import diff_tables

SCHEMA = "runlog_scratch"
TABLES = {
    "keyed": "CREATE TABLE keyed (k TEXT PRIMARY KEY, n INTEGER, x REAL, t TEXT, v)",
    "pair": "CREATE TABLE pair (a TEXT NOT NULL, b INTEGER NOT NULL, n INTEGER,"
    " PRIMARY KEY (a, b))",
    "loose": "CREATE TABLE loose (a TEXT, n INTEGER)",
}
ROWS: dict[str, list[tuple[Any, ...]]] = {
    "keyed": [("k1", 1, 0.5, "a", None), ("k2", None, 1 / 3, None, "1"), ("k3", 3, 2.0, "c", 7)],
    "pair": [("r1", 1, 10), ("r1", 2, None), ("r2", 1, 0)],
    "loose": [("a", 1), ("a", 1), (None, None)],
}


class Tables:
    name = "tables"
    tables = tuple(TABLES)


@pytest.fixture
def dbs(tmp_path: Path) -> Iterator[tuple[SqliteDatabase, SqliteDatabase]]:
    live = SqliteDatabase(sqlite3.connect(tmp_path / "live.db", isolation_level=None))
    rebuilt = SqliteDatabase(sqlite3.connect(":memory:", isolation_level=None))
    for db in (live, rebuilt):
        for table, ddl in TABLES.items():
            db.execute(ddl)
            marks = ", ".join("?" * len(ROWS[table][0]))
            db.executemany(f"INSERT INTO {table} VALUES ({marks})", ROWS[table])
    try:
        yield live, rebuilt
    finally:
        live.close()
        rebuilt.close()


# (a statement run on the rebuilt copy, whether the tables must still compare equal)
CHANGES = [
    ("SELECT 1", True),
    ("UPDATE keyed SET n = n + 1 WHERE k = 'k1'", False),
    ("UPDATE keyed SET n = 1 WHERE k = 'k2'", False),  # NULL -> 1
    ("UPDATE keyed SET t = NULL WHERE k = 'k1'", False),
    ("UPDATE keyed SET x = 2 WHERE k = 'k3'", True),  # REAL column: 2 is 2.0
    ("UPDATE keyed SET v = 7.0 WHERE k = 'k3'", True),  # 7 == 7.0, in Python too
    ("UPDATE keyed SET v = 1 WHERE k = 'k2'", False),  # '1' is not 1
    ("UPDATE keyed SET x = x + 1e-12 WHERE k = 'k2'", False),
    ("DELETE FROM keyed WHERE k = 'k2'", False),
    ("INSERT INTO keyed VALUES ('k4', 4, 4.0, 'd', NULL)", False),
    ("UPDATE keyed SET k = 'k9' WHERE k = 'k3'", False),
    ("INSERT INTO keyed VALUES (NULL, 1, 0.5, 'a', NULL)", False),  # a NULL key
    ("UPDATE pair SET n = NULL WHERE a = 'r2'", False),
    ("UPDATE pair SET b = 3 WHERE a = 'r1' AND b = 2", False),
    ("DELETE FROM loose WHERE rowid = 1", False),  # one of two equal rows
    ("INSERT INTO loose VALUES (NULL, NULL)", False),
    ("UPDATE loose SET n = 1.0 WHERE n = 1", True),
    ("ALTER TABLE loose ADD COLUMN extra TEXT", False),
]


@pytest.mark.parametrize(("change", "equal"), CHANGES)
def test_the_comparison_in_sqlite_answers_as_counting_rows_does(
    dbs: tuple[SqliteDatabase, SqliteDatabase], change: str, equal: bool
) -> None:
    live, rebuilt = dbs
    rebuilt.execute(change)
    counted = diff_tables(live, rebuilt, [Tables()])  # type: ignore[list-item]
    assert (counted == {}) is equal, counted
    live.execute(f"ATTACH DATABASE ':memory:' AS {SCHEMA}")
    live.begin_snapshot()
    try:
        live.copy_from(rebuilt, SCHEMA)
        assert diff_tables(live, rebuilt, [Tables()], SCHEMA) == counted  # type: ignore[list-item]
    finally:
        live.rollback()


def test_a_null_key_on_both_sides_is_compared_in_python(
    dbs: tuple[SqliteDatabase, SqliteDatabase],
) -> None:
    """A NULL key joins nothing, so the join cannot show the tables equal; the rows are then
    counted in Python, which finds them equal."""
    live, rebuilt = dbs
    for db in (live, rebuilt):
        db.execute("INSERT INTO keyed VALUES (NULL, 1, 0.5, 'a', NULL)")
    live.execute(f"ATTACH DATABASE ':memory:' AS {SCHEMA}")
    live.begin_snapshot()
    try:
        live.copy_from(rebuilt, SCHEMA)
        assert diff_tables(live, rebuilt, [Tables()], SCHEMA) == {}  # type: ignore[list-item]
    finally:
        live.rollback()
