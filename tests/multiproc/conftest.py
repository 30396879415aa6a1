"""Several real ``runlog serve`` processes on one real PostgreSQL database.

``pg_db`` is a fresh database per test (dropped afterwards); ``servers`` starts server
subprocesses on it (tests/durability/server_process.py) and stops whatever is still running
at the end of the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.durability.server_process import ServerProcess
from tests.postgres import session_database

#: Every process serving one PostgreSQL log signs access tokens with the same key.
SECRET_CONFIG = 'secret_key = "multiproc-test-secret"\n'


@pytest.fixture
def pg_db() -> Iterator[str]:
    """A fresh PostgreSQL database of its own for this test."""
    yield from session_database()


class Servers:
    """Starts ``runlog serve`` processes on one database; :meth:`close` stops them all."""

    def __init__(self, tmp: Path, db: str) -> None:
        self.tmp = tmp
        self.db = db
        self.started: list[ServerProcess] = []

    async def start(
        self, name: str, extra_config: str = "", extra_args: tuple[str, ...] = ()
    ) -> ServerProcess:
        server = ServerProcess(
            self.tmp / name, SECRET_CONFIG + extra_config, db=self.db, extra_args=extra_args
        )
        self.started.append(server)
        await server.start()
        return server

    async def pair(self, extra_config: str = "") -> tuple[ServerProcess, ServerProcess]:
        """Two servers, A then B: A creates the schema and the first org on the empty
        database before B starts (two separate processes would each bootstrap one)."""
        a = await self.start("a", extra_config)
        b = await self.start("b", extra_config)
        return a, b

    def close(self) -> None:
        for server in self.started:
            process = server.process
            if process is None or process.poll() is not None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.terminate(20)
                continue
            server.kill()


@pytest.fixture
async def servers(tmp_path: Path, pg_db: str) -> AsyncIterator[Servers]:
    group = Servers(tmp_path, pg_db)
    try:
        yield group
    finally:
        group.close()


def log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """The server's structlog lines (JSON), other output skipped."""
    lines = []
    for line in server.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
    return lines


def listening_backends(db: str) -> list[int]:
    """Server pids of the stores' listening connections on ``db``."""
    with psycopg.connect(db, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'runlog-listen'"
        ).fetchall()
    return [int(row[0]) for row in rows]


def children(pid: int) -> set[int]:
    """Direct child processes of ``pid`` (Linux)."""
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found.update(int(child) for child in text.split())
    return found
