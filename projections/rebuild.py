"""Rebuild read models from the log, in place or into a scratch database, and compare tables."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from eventstore import Projection
from eventstore.schema import iter_events

__all__ = ["ReplayError", "diff_tables", "rebuild", "rebuild_in_place", "table_rows"]

_BATCH = 5000
Progress = Callable[[int], None]


class ReplayError(Exception):
    """An event of the log could not be applied (a damaged event): ``position`` names it."""

    def __init__(self, position: int) -> None:
        super().__init__(f"the event at position {position} cannot be applied")
        self.position = position


def _replay(
    source: sqlite3.Connection,
    target: sqlite3.Connection,
    projections: Sequence[Projection],
    progress: Progress | None,
) -> int:
    for projection in projections:
        projection.create(target)
    count = 0
    for count, event in enumerate(iter_events(source, batch=_BATCH), start=1):
        try:
            for projection in projections:
                projection.apply(target, event)
        except Exception as exc:
            raise ReplayError(event.position) from exc
        if progress is not None and count % _BATCH == 0:
            progress(count)
    if progress is not None:
        progress(count)
    return count


def rebuild(
    source: sqlite3.Connection,
    target: sqlite3.Connection,
    projections: Sequence[Projection],
    progress: Progress | None = None,
) -> int:
    """Replay every event of ``source``'s log through ``projections`` into ``target``, a
    database without the projections' tables (a scratch one). Returns the events replayed."""
    target.execute("BEGIN")
    try:
        count = _replay(source, target, projections, progress)
        target.execute("COMMIT")
    except BaseException:
        target.execute("ROLLBACK")
        raise
    return count


def rebuild_in_place(
    conn: sqlite3.Connection,
    projections: Sequence[Projection],
    progress: Progress | None = None,
) -> int:
    """Drop and rebuild the projections of ``conn``'s own log in one write transaction (writers
    of other processes wait for it), checkpoints included."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for projection in projections:
            for table in projection.tables:
                conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        count = _replay(conn, conn, projections, progress)
        head = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0]
        for projection in projections:
            conn.execute(
                "INSERT INTO projection_checkpoints (name, position) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (projection.name, head),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return count


def table_rows(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table`` in a stable order (by every column), for comparisons."""
    columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
    order = ", ".join(f'"{c}"' for c in columns)
    return [tuple(r) for r in conn.execute(f'SELECT * FROM "{table}" ORDER BY {order}')]


def diff_tables(
    live: sqlite3.Connection, rebuilt: sqlite3.Connection, projections: Sequence[Projection]
) -> dict[str, tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Per table, the rows only in ``live`` and the rows only in ``rebuilt`` (empty: equal)."""
    differences = {}
    for projection in projections:
        for table in projection.tables:
            live_rows = table_rows(live, table)
            new_rows = table_rows(rebuilt, table)
            if live_rows != new_rows:
                live_set, new_set = set(live_rows), set(new_rows)
                differences[table] = (
                    [r for r in live_rows if r not in new_set],
                    [r for r in new_rows if r not in live_set],
                )
    return differences
