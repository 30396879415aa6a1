"""Fixtures shared by the event store tests.

The contract tests only ever see a store through ``store_factory`` (or ``open_backend`` for
hypothesis tests, which cannot use function-scoped fixtures). To run the whole contract suite
against another backend, add its id to ``BACKENDS`` and a branch to ``_open``. On
PostgreSQL a test's "directory" maps to its own schema in the session's database.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from eventstore import PostgresEventStore, Projection, SQLiteEventStore
from tests.postgres import fresh_schema

BACKENDS = ["sqlite", "postgres"]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_WRITER = Path(__file__).resolve().parent / "child_writer.py"

Opener = Callable[..., Awaitable[Any]]


def location(backend: str, directory: Path, pg_database: str | None) -> str:
    """Where ``backend`` keeps the log of ``directory``: a file in it, or a schema named
    after it."""
    if backend == "sqlite":
        # A real file in WAL mode, never ":memory:".
        return str(directory / "events.db")
    assert pg_database is not None
    schema = "s_" + hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    return fresh_schema(pg_database, schema)


async def _open(
    backend: str, directory: Path, projections: Sequence[Projection], pg_database: str | None
) -> Any:
    """Open a store of ``backend`` whose data lives under ``directory``."""
    where = location(backend, directory, pg_database)
    if backend == "sqlite":
        return await SQLiteEventStore.open(where, projections)
    if backend == "postgres":
        return await PostgresEventStore.open(where, projections)
    raise ValueError(f"unknown backend {backend!r}")


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def pg_database(backend: str, request: pytest.FixtureRequest) -> str | None:
    """The session's PostgreSQL database when the backend needs one."""
    return str(request.getfixturevalue("pg_url")) if backend == "postgres" else None


@pytest.fixture(scope="session")
def open_backend(backend: str, pg_database: str | None) -> Opener:
    """``await open_backend(directory, projections=())``: a fresh store of one backend."""

    async def opener(directory: Path, projections: Sequence[Projection] = ()) -> Any:
        return await _open(backend, Path(directory), projections, pg_database)

    return opener


@pytest.fixture
def log_location(backend: str, pg_database: str | None, tmp_path: Path) -> str:
    """This test's log as ``runlog --db`` takes it: a SQLite path or a PostgreSQL URL."""
    return location(backend, tmp_path, pg_database)


@pytest.fixture
async def store_factory(open_backend: Opener, tmp_path: Path) -> AsyncIterator[Opener]:
    """``await store_factory(projections=())``: a store on this test's database.

    Every call opens another handle on the *same* database (to test reopening); every handle
    still open at the end of the test is closed.
    """
    opened: list[Any] = []

    async def factory(projections: Sequence[Projection] = ()) -> Any:
        store = await open_backend(tmp_path, projections)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
async def store(store_factory: Opener) -> Any:
    return await store_factory()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """The SQLite file used by the SQLite-specific tests."""
    return tmp_path / "events.db"


@pytest.fixture
async def sqlite_store(db_path: Path) -> AsyncIterator[SQLiteEventStore]:
    store = await SQLiteEventStore.open(str(db_path))
    yield store
    await store.close()


@pytest.fixture
def child_env() -> dict[str, str]:
    """Environment for child processes so that ``import eventstore`` works."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture
def child_writer_cmd() -> list[str]:
    """The command line prefix that runs ``child_writer.py`` with this interpreter."""
    return [sys.executable, str(CHILD_WRITER)]
