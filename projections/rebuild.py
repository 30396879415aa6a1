"""Rebuild read models from the log into a database, and compare two databases' tables."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from eventstore import Projection, RecordedEvent
from eventstore.schema import EVENT_COLUMNS

__all__ = ["rebuild", "table_rows"]

_BATCH = 5000


def rebuild(
    source: sqlite3.Connection,
    target: sqlite3.Connection,
    projections: Sequence[Projection],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Replay every event of ``source``'s log through ``projections`` into ``target``.

    ``target`` must not hold the projections' tables yet (a scratch database, or one whose
    projection tables were dropped). Returns the number of events replayed.
    """
    target.execute("BEGIN")
    try:
        for projection in projections:
            projection.create(target)
        after, count = 0, 0
        while True:
            rows = source.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                (after, _BATCH),
            ).fetchall()
            if not rows:
                break
            for row in rows:
                event = RecordedEvent(*row)
                for projection in projections:
                    projection.apply(target, event)
            count += len(rows)
            after = rows[-1][0]
            if progress is not None:
                progress(count)
        target.execute("COMMIT")
    except BaseException:
        target.execute("ROLLBACK")
        raise
    return count


def table_rows(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table`` in a stable order (by every column), for comparisons."""
    columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
    order = ", ".join(f'"{c}"' for c in columns)
    return [tuple(r) for r in conn.execute(f'SELECT * FROM "{table}" ORDER BY {order}')]
