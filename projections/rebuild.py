"""Rebuild read models from the log, in place or into a scratch database, and compare tables.

Everything goes through :class:`eventstore.Database`, so it works the same on SQLite and on
PostgreSQL (the scratch database of ``rebuild --check`` is ``eventstore.scratch_database``), and
rows are compared as Python values in an engine-independent order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from eventstore import Database, Projection, RecordedEvent, SqlConnection
from eventstore.schema import EVENT_COLUMNS
from projections.base import Decoded, TableProjection
from runs.events import decode_event

if TYPE_CHECKING:
    from projections.parallel import ReplayHelper

__all__ = [
    "ReplayError",
    "apply_chunk",
    "diff_tables",
    "rebuild",
    "rebuild_in_place",
    "table_rows",
]

#: Events per chunk: read with one query, applied in one savepoint.
_BATCH = 5000
Progress = Callable[[int], None]
#: The page cache of a SQLite rebuild in place, in KiB (``rebuild_in_place``).
SQLITE_CACHE_KIB = 64 * 1024


class ReplayError(Exception):
    """An event of the log could not be applied (a damaged event): ``position`` names it."""

    def __init__(self, position: int) -> None:
        super().__init__(f"the event at position {position} cannot be applied")
        self.position = position


def _head(db: Database) -> int:
    row = db.fetch_one("SELECT coalesce(max(position), 0) FROM events")
    return int(row[0]) if row else 0


def _replay(
    source: Database,
    target: Database,
    projections: Sequence[Projection],
    progress: Progress | None,
    head: int | None = None,
) -> int:
    """Apply every event of ``source``'s log up to ``head`` (its head now, by default) to
    ``projections`` in ``target``; returns how many events the log holds up to there.

    When every projection is a :class:`TableProjection` (all of runlog's are) only the events
    of the types they handle are read (most of a log is ``message.delta``, which no read model
    keeps), each is decoded once, and a chunk is applied with ``apply_many``. If a chunk fails
    it is rolled back and applied again event by event, so the error names its event."""
    tables = [p for p in projections if isinstance(p, TableProjection)]
    bulk = len(tables) == len(projections)
    for projection in projections:
        projection.create(target)
    if head is None:
        head = _head(source)
    sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? AND position <= ?"
    types: tuple[str, ...] = ()
    if bulk:
        types = tuple(sorted(set().union(*(p.event_types for p in tables))))
        sql += f" AND type IN ({', '.join('?' * len(types))})"
    sql += " ORDER BY position LIMIT ?"
    after = 0
    while rows := source.fetch_all(sql, (after, head, *types, _BATCH)):
        chunk = [RecordedEvent(*row) for row in rows]
        after = chunk[-1].position
        if bulk:
            _apply_chunk(target, tables, chunk)
        else:
            _apply_each(target, projections, chunk)
        if progress is not None:
            progress(after)
    if progress is not None:
        progress(head)
    return head


def apply_chunk(
    db: SqlConnection, projections: Sequence[TableProjection], chunk: Sequence[RecordedEvent]
) -> None:
    """Apply a chunk of events (in log order) with each projection's ``apply_many``: every
    event that a projection reads decoded once, each projection given the events of its types
    (sorted out in one pass over the chunk; an event no projection reads is not decoded, as
    ``TableProjection.apply`` would not decode it)."""
    batches: list[list[Decoded]] = [[] for _ in projections]
    # Event type -> the batches of the projections that read it.
    routes: dict[str, tuple[list[Decoded], ...]] = {}
    for event in chunk:
        kind = event.type
        targets = routes.get(kind)
        if targets is None:
            targets = routes[kind] = tuple(
                batch
                for projection, batch in zip(projections, batches, strict=True)
                if kind in projection.event_types
            )
        if targets:
            pair = (event, decode_event(event))
            for batch in targets:
                batch.append(pair)
    for projection, batch in zip(projections, batches, strict=True):
        projection.apply_many(db, batch)


def _apply_chunk(
    db: Database, projections: Sequence[TableProjection], chunk: list[RecordedEvent]
) -> None:
    db.savepoint("rebuild_chunk")
    try:
        apply_chunk(db, projections, chunk)
    except Exception:
        db.rollback_to("rebuild_chunk")
        db.release("rebuild_chunk")
        _apply_each(db, projections, chunk)
    else:
        db.release("rebuild_chunk")


def _apply_each(
    db: Database, projections: Sequence[Projection], chunk: list[RecordedEvent]
) -> None:
    for event in chunk:
        try:
            for projection in projections:
                projection.apply(db, event)
        except Exception as exc:
            raise ReplayError(event.position) from exc


def rebuild(
    source: Database,
    target: Database,
    projections: Sequence[Projection],
    progress: Progress | None = None,
    *,
    head: int | None = None,
) -> int:
    """Replay every event of ``source``'s log (up to ``head``, by default its head now) through
    ``projections`` into ``target``, a database without the projections' tables (a scratch
    one). Returns the events replayed."""
    target.begin_schema()
    try:
        count = _replay(source, target, projections, progress, head)
        target.commit()
    except BaseException:
        target.rollback()
        raise
    return count


def rebuild_in_place(
    db: Database,
    projections: Sequence[Projection],
    progress: Progress | None = None,
    *,
    helper: ReplayHelper | None = None,
) -> int:
    """Drop and rebuild the projections of ``db``'s own log in one write transaction that holds
    the head (writers of other processes wait for it), checkpoints included.

    ``helper``: a process forked to replay some of ``projections`` side by side with this one
    (``projections.parallel``); it is started with the head once the head is held, and its
    tables are copied in before the commit."""
    cache = None
    if db.dialect == "sqlite":
        # The rebuild writes every page of the read models in this one transaction (about 50 MB
        # for a million events of realistic runs): with SQLite's default 2 MiB page cache, the
        # B-trees being filled are read back again and again. Set for this rebuild only.
        row = db.fetch_one("PRAGMA cache_size")
        cache = int(row[0]) if row else None
        db.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
    try:
        return _rebuild_in_place(db, projections, progress, helper)
    finally:
        if cache is not None:
            db.execute(f"PRAGMA cache_size = {cache}")


def _rebuild_in_place(
    db: Database,
    projections: Sequence[Projection],
    progress: Progress | None,
    helper: ReplayHelper | None,
) -> int:
    db.begin_write()
    try:
        head, _ = db.head()
        mine: Sequence[Projection] = projections
        if helper is not None:
            # Started before the drops: it reads only the log, which they do not touch, and
            # its half is the longer one.
            mine, progress = helper.begin(head, projections, progress)
        for projection in projections:
            for table in projection.tables:
                db.execute(f'DROP TABLE IF EXISTS "{table}"')
        count = _replay(db, db, mine, progress, head)
        if helper is not None:
            helper.wait(progress)
            helper.adopt(db)
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
    finally:
        if helper is not None:
            helper.detach(db)
    return count


def _order(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # NULLs first, as SQLite orders them (PostgreSQL puts them last).
    return tuple((value is not None, value if value is not None else 0) for value in row)


def table_rows(db: Database, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table`` in a stable order (by every column), for comparisons."""
    columns = ", ".join(f'"{c}"' for c in db.table_columns(table))
    return sorted(db.fetch_all(f'SELECT {columns} FROM "{table}"'), key=_order)


def _counted_rows(db: Database, table: str) -> Counter[tuple[Any, ...]]:
    columns = ", ".join(f'"{c}"' for c in db.table_columns(table))
    return Counter(db.fetch_all(f'SELECT {columns} FROM "{table}"'))


def diff_tables(
    live: Database,
    rebuilt: Database,
    projections: Sequence[Projection],
    attached: str | None = None,
) -> dict[str, tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Per table, the rows only in ``live`` and the rows only in ``rebuilt`` (empty: equal).

    Tables are compared as multisets of rows (hashing, not sorting: the same answer as
    comparing ``table_rows`` in order, at a fraction of the cost on a large log); the rows
    listed are in ``table_rows`` order.

    ``attached``: ``live`` is SQLite and a copy of ``rebuilt`` is attached to its connection
    under that schema name; then a table is first compared inside SQLite (``_same_rows``), and
    only a table found to differ there has its rows read and counted here."""
    differences = {}
    for projection in projections:
        for table in projection.tables:
            if attached is not None and _same_rows(live, attached, table):
                continue
            live_rows = _counted_rows(live, table)
            new_rows = _counted_rows(rebuilt, table)
            # Counted rows have no zero counts, so plain dict equality is multiset equality
            # (Counter's own == walks both in Python, which cost more than the counting).
            if not dict.__eq__(live_rows, new_rows):
                differences[table] = (
                    sorted((live_rows - new_rows).elements(), key=_order),
                    sorted((new_rows - live_rows).elements(), key=_order),
                )
    return differences


def _same_rows(db: Database, other: str, table: str) -> bool:
    """Whether ``table`` holds the same rows in ``db``'s main schema and in its attached schema
    ``other`` (SQLite), without reading them into Python. True only when both tables have the
    same columns and primary key, the same number of rows, and every row of each is joined to
    a row of the other by the primary key (``=``, so a NULL key joins nothing) with every
    other column equal (``IS``: NULLs equal; values compared as Python compares them — 1 and
    1.0 equal, text never equal to a number). Primary keys are unique, so the join pairs rows
    one to one. False means only "not shown equal": the caller compares the rows itself."""
    info = db.fetch_all(f'PRAGMA main.table_info("{table}")')
    if not info or info != db.fetch_all(f'PRAGMA "{other}".table_info("{table}")'):
        return False
    # (cid, name, type, notnull, default, pk): pk is the column's place in the key, 0 if none.
    key = [row[1] for row in sorted(info, key=lambda row: row[5]) if row[5]]
    if not key:
        return False
    on = " AND ".join(
        [f'a."{c}" = b."{c}"' for c in key]
        + [f'a."{row[1]}" IS b."{row[1]}"' for row in info if not row[5]]
    )
    counts = db.fetch_one(
        f'SELECT (SELECT count(*) FROM main."{table}"), (SELECT count(*) FROM "{other}"."{table}"),'
        f' (SELECT count(*) FROM main."{table}" a JOIN "{other}"."{table}" b ON {on})'
    )
    return counts is not None and counts[0] == counts[1] == counts[2]
