"""Rebuild read models from the log, in place or into a scratch database, and compare tables.

Everything goes through :class:`eventstore.Database`, so it works the same on SQLite and on
PostgreSQL (the scratch database of ``rebuild --check`` is ``eventstore.scratch_database``), and
rows are compared as Python values in an engine-independent order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eventstore import Database, Projection
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
    source: Database,
    target: Database,
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
    source: Database,
    target: Database,
    projections: Sequence[Projection],
    progress: Progress | None = None,
) -> int:
    """Replay every event of ``source``'s log through ``projections`` into ``target``, a
    database without the projections' tables (a scratch one). Returns the events replayed."""
    target.begin_schema()
    try:
        count = _replay(source, target, projections, progress)
        target.commit()
    except BaseException:
        target.rollback()
        raise
    return count


def rebuild_in_place(
    db: Database,
    projections: Sequence[Projection],
    progress: Progress | None = None,
) -> int:
    """Drop and rebuild the projections of ``db``'s own log in one write transaction that holds
    the head (writers of other processes wait for it), checkpoints included."""
    db.begin_write()
    try:
        head, _ = db.head()
        for projection in projections:
            for table in projection.tables:
                db.execute(f'DROP TABLE IF EXISTS "{table}"')
        count = _replay(db, db, projections, progress)
        for projection in projections:
            db.execute(
                "INSERT INTO projection_checkpoints (name, position) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (projection.name, head),
            )
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return count


def _order(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # NULLs first, as SQLite orders them (PostgreSQL puts them last).
    return tuple((value is not None, value if value is not None else 0) for value in row)


def table_rows(db: Database, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table`` in a stable order (by every column), for comparisons."""
    columns = ", ".join(f'"{c}"' for c in db.table_columns(table))
    return sorted(db.fetch_all(f'SELECT {columns} FROM "{table}"'), key=_order)


def diff_tables(
    live: Database, rebuilt: Database, projections: Sequence[Projection]
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
