"""Fixtures shared by the event store tests.

The contract tests only ever see a store through ``store_factory`` (or ``open_backend`` for
hypothesis tests, which cannot use function-scoped fixtures). To run the whole contract suite
against another backend, add its id to ``BACKENDS`` and a branch to ``_open``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from eventstore import Projection, SQLiteEventStore

BACKENDS = ["sqlite"]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_WRITER = Path(__file__).resolve().parent / "child_writer.py"

Opener = Callable[..., Awaitable[Any]]


async def _open(backend: str, directory: Path, projections: Sequence[Projection] = ()) -> Any:
    """Open a store of ``backend`` whose data lives under ``directory``."""
    if backend == "sqlite":
        # A real file in WAL mode, never ":memory:".
        return await SQLiteEventStore.open(str(directory / "events.db"), projections)
    raise ValueError(f"unknown backend {backend!r}")


@pytest.fixture(scope="session", params=BACKENDS)
def open_backend(request: pytest.FixtureRequest) -> Opener:
    """``await open_backend(directory, projections=())``: a fresh store of one backend."""
    backend = request.param

    async def opener(directory: Path, projections: Sequence[Projection] = ()) -> Any:
        return await _open(backend, Path(directory), projections)

    return opener


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
