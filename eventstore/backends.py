"""The one composition point: a location (a SQLite path or a ``postgresql://`` URL) to a store
or a synchronous connection. Nothing else in runlog names a backend class."""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

from eventstore.errors import StorageError, StorageUnavailable
from eventstore.leases import Leases, LocalLeases
from eventstore.projection import Projection
from eventstore.protocol import EventStore
from eventstore.schema import connect
from eventstore.sql import Database, SqliteDatabase
from eventstore.sqlite import SQLiteEventStore, open_read_only
from eventstore.throttle import FailureCounts

__all__ = [
    "Coordination",
    "connect_database",
    "describe",
    "is_postgres_url",
    "log_exists",
    "open_coordination",
    "open_event_store",
    "scratch_database",
    "startup_lock",
]


# The PostgreSQL backend (psycopg, asyncpg: about 0.3 s of imports) is imported only for a
# ``postgresql://`` location, so a SQLite service and every command on a file never pay for it.


def is_postgres_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


#: The PostgreSQL advisory lock key held while a process prepares the log at start-up.
STARTUP_LOCK_KEY = 0x72756E6C6F67  # "runlog"


@contextlib.asynccontextmanager
async def startup_lock(location: str) -> AsyncIterator[None]:
    """Held while a process prepares the log at start-up (records persona versions, makes the
    first org on an empty log). On PostgreSQL it is a session advisory lock, so processes
    that start together on one database, on any machine, do that work once, one after the
    other, each seeing what the previous one wrote. A SQLite file is served by one process,
    so there it holds nothing."""
    if not is_postgres_url(location):
        yield
        return
    import asyncpg

    conn = await asyncpg.connect(location, timeout=10)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", STARTUP_LOCK_KEY)
        yield
    finally:
        # Closing the session releases its advisory locks, also when the work above failed.
        await conn.close()


async def open_event_store(location: str, projections: Sequence[Projection] = ()) -> EventStore:
    """Open the log at ``location``: a ``postgresql://`` URL, or else a SQLite file path."""
    if is_postgres_url(location):
        from eventstore.postgres import PostgresEventStore

        return await PostgresEventStore.open(location, projections)
    return await SQLiteEventStore.open(location, projections)


class Coordination:
    """What the processes serving one log coordinate through, outside the log: run leases and,
    on PostgreSQL, the login throttle's failure counts (``None``: count in memory, since one
    process serves a SQLite log)."""

    def __init__(
        self, leases: Leases, failures: FailureCounts | None, close: Callable[[], Awaitable[None]]
    ) -> None:
        self.leases = leases
        self.failures = failures
        self._close = close

    async def close(self) -> None:
        await self.leases.close()
        await self._close()


async def open_coordination(location: str, owner: str, lease_seconds: float) -> Coordination:
    """Leases (and shared counts) for the log at ``location``, held by ``owner``."""
    if not is_postgres_url(location):
        return Coordination(LocalLeases(owner, lease_seconds), None, _nothing)
    import asyncpg

    from eventstore.leases import LEASES_SCHEMA, PostgresLeases
    from eventstore.postgres import _SCHEMA_LOCK, _display
    from eventstore.throttle import THROTTLE_SCHEMA

    try:
        # Small and writable (the store's readers are read-only): a renewal or a throttle
        # check is one short statement.
        # Leases and counts are coordination, not history: their commits need not wait for
        # the WAL flush (after a database crash a lease lost this way lapses, or is found
        # missing, and is taken again), which makes a lease cost a round trip, not an fsync.
        pool = await asyncpg.create_pool(
            location,
            min_size=1,
            max_size=4,
            timeout=10,
            server_settings={"synchronous_commit": "off"},
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise StorageUnavailable(f"cannot connect to {_display(location)}: {exc}") from exc
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            for statement in (*LEASES_SCHEMA, *THROTTLE_SCHEMA):
                await conn.execute(statement)
    except BaseException:
        await pool.close()
        raise
    return Coordination(PostgresLeases(pool, owner, lease_seconds), FailureCounts(pool), pool.close)


async def _nothing() -> None:
    return None


def connect_database(location: str, *, read_only: bool = False) -> Database:
    """A synchronous connection to the database at ``location`` (for the command-line tools).

    ``read_only``: the log is never written through it. A SQLite file is opened read-only (not
    even its WAL is written; a copy on read-only media is opened as immutable); a PostgreSQL
    session has every transaction read-only."""
    if is_postgres_url(location):
        from eventstore.postgres import PostgresDatabase

        db = PostgresDatabase.connect(location)
        if read_only:
            db.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        return db
    try:
        return SqliteDatabase(open_read_only(location) if read_only else connect(location))
    except Exception as exc:
        raise StorageError(f"cannot open {location}: {exc}") from exc


def log_exists(location: str) -> bool:
    """Whether there is a log to read at ``location`` (a file, or a database with events)."""
    if not is_postgres_url(location):
        return os.path.exists(location)
    db = connect_database(location)
    try:
        return db.table_exists("events")
    finally:
        db.close()


def describe(location: str) -> str:
    """``location`` fit for a message: a URL loses its password."""
    if not is_postgres_url(location):
        return location
    from eventstore.postgres import _display

    return _display(location)


@contextlib.contextmanager
def scratch_database(location: str) -> Iterator[Database]:
    """An empty database of the same engine as ``location``, dropped afterwards: an in-memory
    SQLite one, or on PostgreSQL a schema of its own in the same database (so a rebuild there is
    compared on the engine that built the live tables). A PostgreSQL user who may not create a
    schema gets the in-memory SQLite one."""
    if is_postgres_url(location):
        from eventstore.postgres import PostgresDatabase

        db = PostgresDatabase.connect(location)
        schema = f"runlog_scratch_{secrets.token_hex(6)}"
        try:
            db.execute(f'CREATE SCHEMA "{schema}"')
        except db.errors:
            db.close()
        else:
            try:
                db.execute(f'SET search_path TO "{schema}"')
                yield db
            finally:
                db.rollback()
                db.execute(f'DROP SCHEMA "{schema}" CASCADE')
                db.close()
            return
    memory = SqliteDatabase(sqlite3.connect(":memory:", isolation_level=None))
    try:
        yield memory
    finally:
        memory.close()
