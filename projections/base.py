"""A small base for table projections: dispatch by event type, decode once, skip the rest.

Besides ``apply`` (one event, as the store calls it in each append's transaction) a table
projection has ``apply_many``, which a rebuild calls with a chunk of decoded events. By default
it applies them one by one; the projections that see most events (threads, runs, usage)
override it to read the rows the chunk touches at once, change them in memory and write them
back with one ``executemany`` per table. Both must leave exactly the same rows: a property test
applies generated logs both ways, in chunks of every size, and compares the tables.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from eventstore import RecordedEvent, SqlConnection
from runs.events import RUN_STREAM_PREFIX, DomainEvent, RunStarted, decode_event

__all__ = ["Decoded", "Handler", "RowCache", "TableProjection", "chunk_runs"]

Handler = Callable[[SqlConnection, Any, RecordedEvent], None]
#: A recorded event with its decoded domain event.
Decoded = tuple[RecordedEvent, DomainEvent]

#: Ids per ``IN (...)`` list when rows are read by key (well under both engines' limits).
_KEYS_PER_QUERY = 500


#: The event last decoded for ``apply``, with its decoding: the writer applies an event to every
#: read model that uses it in turn, and a run's end is used by three. Domain events are frozen,
#: so the handlers can share one. One tuple, read and replaced whole: a store's writer on
#: another thread sees either pair, and compares by identity.
_last_decoded: Decoded | None = None


def _decoded(event: RecordedEvent) -> DomainEvent:
    global _last_decoded  # noqa: PLW0603 - a one-entry cache shared by every projection
    last = _last_decoded
    if last is not None and last[0] is event:
        return last[1]
    decoded = decode_event(event)
    _last_decoded = (event, decoded)
    return decoded


class TableProjection:
    """Subclasses set ``name``, ``tables``, ``ddl`` and map event classes to handlers.

    Handlers receive the decoded event and the recorded one (for ``created_at``, ``seq``);
    they must use nothing else, so a rebuild from the log gives identical rows.
    """

    name: str = ""
    tables: tuple[str, ...] = ()
    ddl: str = ""
    #: The projections (by name) whose tables this one reads: a rebuild on two processes
    #: (``projections.parallel``) keeps them in the same process.
    reads: tuple[str, ...] = ()
    #: Roughly how much of a rebuild's time this projection takes, relative to the others
    #: (measured on a log of realistic runs), to share a rebuild evenly between processes.
    rebuild_cost: int = 1

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {
            cls.TYPE: handler for cls, handler in self.handlers().items()
        }
        #: The event types this projection reads; a rebuild need not read the others.
        self.event_types = frozenset(self._handlers)

    def handlers(self) -> dict[type[DomainEvent], Handler]:
        raise NotImplementedError

    def create(self, conn: SqlConnection) -> None:
        # ``ddl`` is written once in SQLite's words; the PostgreSQL adapter maps its column
        # types (eventstore.postgres.portable_ddl), the one place where they differ.
        for statement in self.ddl.split(";"):
            if statement.strip():
                conn.execute_ddl(statement)

    def apply(self, conn: SqlConnection, event: RecordedEvent) -> None:
        handler = self._handlers.get(event.type)
        if handler is not None:
            handler(conn, _decoded(event), event)

    def apply_many(self, conn: SqlConnection, events: Sequence[Decoded]) -> None:
        """Apply a chunk of events in log order, leaving the rows ``apply`` of each would.

        ``events`` may leave out types this projection does not handle. On an error the
        caller rolls the chunk back and applies it again event by event, to name the event."""
        handlers = self._handlers
        for recorded, event in events:
            handler = handlers.get(recorded.type)
            if handler is not None:
                handler(conn, event, recorded)


class RowCache:
    """Rows of one table keyed by their primary key, for applying a chunk in memory.

    ``load`` reads the rows of the given keys as they are before the chunk; the chunk then
    reads and changes them here (``get``, ``put``, ``drop``), and ``flush`` writes the
    difference back: an INSERT for a row that is new, an UPDATE for one that changed, a DELETE
    for one that went away. A row is a list of every column in table order, key columns first.
    """

    def __init__(self, table: str, columns: Sequence[str], key_size: int = 1) -> None:
        self.table = table
        self.columns = tuple(columns)
        self.key_size = key_size
        self.before: dict[Any, tuple[Any, ...] | None] = {}
        self.rows: dict[Any, list[Any] | None] = {}
        #: First key values whose rows have all been read.
        self.loaded: set[Any] = set()
        #: On a table with a longer key: the keys known under each first key value.
        self._under: dict[Any, set[Any]] = {}

    def _key(self, row: Sequence[Any]) -> Any:
        return row[0] if self.key_size == 1 else tuple(row[: self.key_size])

    def load(self, conn: SqlConnection, keys: Collection[Any], column: str = "") -> None:
        """Read the rows whose first key column (or ``column``) is one of ``keys``. Without
        ``column`` the keys are then known: those not found are absent, and on a table with a
        longer key every row of a loaded first key is here."""
        wanted = [k for k in keys if k not in self.loaded] if not column else list(keys)
        select = ", ".join(self.columns)
        where = column or self.columns[0]
        for start in range(0, len(wanted), _KEYS_PER_QUERY):
            part = wanted[start : start + _KEYS_PER_QUERY]
            for row in conn.fetch_all(
                f"SELECT {select} FROM {self.table} WHERE {where} IN"
                f" ({', '.join('?' * len(part))})",
                part,
            ):
                self._loaded_row(row)
        if not column:
            self.loaded.update(wanted)
            if self.key_size == 1:
                for key in wanted:
                    if key not in self.rows:
                        self.before[key] = None
                        self.rows[key] = None

    def absent(self, keys: Iterable[Any]) -> None:
        """Know, without reading the table, that no row has one of ``keys`` as its first key
        value: keys created by an event of the chunk (a run's ``run.started``, a thread's
        ``thread.created``), which a valid log holds once. Should a row be there after all,
        the INSERT of ``flush`` fails on the primary key, and the caller applies the chunk
        again event by event, which names the event."""
        rows, before = self.rows, self.before
        for key in keys:
            if key not in self.loaded:
                self.loaded.add(key)
                if self.key_size == 1 and key not in rows:
                    before[key] = None
                    rows[key] = None

    def load_key(self, conn: SqlConnection, key: tuple[Any, ...]) -> None:
        """Read the row of one whole key (of a table with a longer key), unless it is known."""
        if key in self.rows or key[0] in self.loaded:
            return
        where = " AND ".join(f"{c} = ?" for c in self.columns[: self.key_size])
        row = conn.fetch_one(
            f"SELECT {', '.join(self.columns)} FROM {self.table} WHERE {where}", key
        )
        if row is None:
            self.before[key] = None
            self.rows[key] = None
        else:
            self._loaded_row(row)

    def _loaded_row(self, row: tuple[Any, ...]) -> None:
        key = self._key(row)
        if key not in self.rows:
            self.before[key] = row
            self.rows[key] = list(row)
            if self.key_size > 1:
                self._under.setdefault(key[0], set()).add(key)

    def under(self, first: Any) -> list[list[Any]]:
        """The present rows whose first key column is ``first`` (loaded, on a longer key)."""
        rows = self.rows
        return [row for key in self._under.get(first, ()) if (row := rows[key]) is not None]

    def known(self, key: Any) -> bool:
        return key in self.rows

    def get(self, key: Any) -> list[Any] | None:
        return self.rows.get(key)

    def put(self, row: list[Any]) -> None:
        """Insert or replace a row (its key must be known: loaded, or known absent)."""
        size = self.key_size
        key = row[0] if size == 1 else tuple(row[:size])
        rows = self.rows
        if key not in rows:
            self.before[key] = None
            if size > 1:
                self._under.setdefault(key[0], set()).add(key)
        rows[key] = row

    def drop(self, key: Any) -> None:
        if key in self.rows:
            self.rows[key] = None

    def items(self) -> Iterable[tuple[Any, list[Any] | None]]:
        return self.rows.items()

    def flush(self, conn: SqlConnection) -> None:
        inserts: list[list[Any]] = []
        updates: list[list[Any]] = []
        deletes: list[Sequence[Any]] = []
        size = self.key_size
        for key, row in self.rows.items():
            before = self.before[key]
            if row is None:
                if before is not None:
                    deletes.append(before[:size])
            elif before is None:
                inserts.append(row)
            elif tuple(row) != before:
                updates.append([*row[size:], *row[:size]])
        keys = " AND ".join(f"{c} = ?" for c in self.columns[:size])
        if deletes:
            conn.executemany(f"DELETE FROM {self.table} WHERE {keys}", deletes)
        if updates:
            assignments = ", ".join(f"{c} = ?" for c in self.columns[size:])
            conn.executemany(f"UPDATE {self.table} SET {assignments} WHERE {keys}", updates)
        if inserts:
            conn.executemany(
                f"INSERT INTO {self.table} ({', '.join(self.columns)})"
                f" VALUES ({', '.join('?' * len(self.columns))})",
                inserts,
            )
        self.before.clear()
        self.rows.clear()
        self.loaded.clear()
        self._under.clear()


def chunk_runs(events: Sequence[Decoded]) -> tuple[set[str], list[str]]:
    """The runs a chunk of run events touches, and those it starts (whose rows cannot be in
    the tables yet): what the bulk paths of the run projections load and mark absent."""
    touched = {
        e.run_id if isinstance(e, RunStarted) else r.stream.removeprefix(RUN_STREAM_PREFIX)
        for r, e in events
    }
    return touched, [e.run_id for _, e in events if isinstance(e, RunStarted)]
