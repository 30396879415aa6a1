"""Run leases: which process drives a run (docs/architecture.md, "Execution").

A lease is coordination, not history: it lives in its own table, never in the log, and losing
the table loses nothing but the current assignment (the log records which process started or
resumed a run; the append's ``expected_seq`` stays the fence between two drivers).

- :class:`LocalLeases` — one process serves the log (SQLite): a set in memory, as cheap as no
  lease at all.
- :class:`PostgresLeases` — any number of processes on one PostgreSQL database: the table
  ``run_leases(run_id, owner, expires_at)``, times on the database's clock so the machines'
  clocks need not agree. A lease is taken with one conditional upsert (free, expired or
  already ours), all of an owner's leases are renewed with one statement, and a released
  lease is deleted; at shutdown a process's leases are made to lapse at once, so the others
  find them at their next look.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import asyncpg

__all__ = ["Leases", "LocalLeases", "PostgresLeases", "process_id"]


def process_id() -> str:
    """This process's name in leases and in the log: ``hostname:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Leases(Protocol):
    """The leases of one owner (a process)."""

    owner: str
    lease_seconds: float
    #: Whether other processes may hold leases on the same runs (then a takeover loop looks
    #: for leases that lapsed).
    shared: bool

    async def acquire(self, run_id: str) -> bool:
        """Take the run's lease if it is free, expired or already ours."""
        ...

    async def renew(self) -> set[str]:
        """Extend every lease of the owner; returns the runs whose lease it still holds."""
        ...

    async def release(self, run_id: str) -> None:
        """Give the run's lease up (if the owner holds it)."""
        ...

    async def release_all(self) -> None:
        """Let every lease of the owner lapse now (graceful shutdown): other processes find
        them at their next look for lapsed leases."""
        ...

    async def lapsed(self, limit: int = 100) -> list[str]:
        """Runs whose lease expired (its holder stopped renewing: it died)."""
        ...

    async def unheld(self, run_ids: Sequence[str]) -> list[str]:
        """Those of ``run_ids`` that nobody holds (no lease, or an expired one)."""
        ...

    async def forget(self, run_id: str) -> None:
        """Delete the run's lease if it expired (a run nobody needs to drive)."""
        ...

    async def close(self) -> None: ...


class LocalLeases:
    """Leases of the only process that serves the log."""

    shared = False

    def __init__(self, owner: str, lease_seconds: float) -> None:
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._held: set[str] = set()

    async def acquire(self, run_id: str) -> bool:
        self._held.add(run_id)
        return True

    async def renew(self) -> set[str]:
        return set(self._held)

    async def release(self, run_id: str) -> None:
        self._held.discard(run_id)

    async def release_all(self) -> None:
        self._held.clear()

    async def lapsed(self, limit: int = 100) -> list[str]:
        return []

    async def unheld(self, run_ids: Sequence[str]) -> list[str]:
        return [run_id for run_id in run_ids if run_id not in self._held]

    async def forget(self, run_id: str) -> None:
        return None

    async def close(self) -> None:
        self._held.clear()


LEASES_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS run_leases (
        run_id     TEXT COLLATE "C" PRIMARY KEY,
        owner      TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS run_leases_by_expiry ON run_leases (expires_at)",
    "CREATE INDEX IF NOT EXISTS run_leases_by_owner ON run_leases (owner)",
]

_ACQUIRE = """
INSERT INTO run_leases (run_id, owner, expires_at)
SELECT id, $2, now() + make_interval(secs => $3) FROM unnest($1::text[]) AS id ORDER BY id
ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE run_leases.owner = excluded.owner OR run_leases.expires_at < now()
RETURNING run_id"""
_RENEW = """
UPDATE run_leases SET expires_at = now() + make_interval(secs => $2)
WHERE owner = $1 RETURNING run_id"""
_RELEASE = "DELETE FROM run_leases WHERE run_id = ANY($1::text[]) AND owner = $2"
_RELEASE_ALL = "UPDATE run_leases SET expires_at = '-infinity' WHERE owner = $1"
_LAPSED = "SELECT run_id FROM run_leases WHERE expires_at < now() ORDER BY expires_at LIMIT $1"
_UNHELD = """
SELECT id FROM unnest($1::text[]) AS id
WHERE NOT EXISTS (SELECT 1 FROM run_leases WHERE run_id = id AND expires_at >= now())"""
_FORGET = "DELETE FROM run_leases WHERE run_id = $1 AND expires_at < now()"


class _Coalesced:
    """Concurrent calls with one run id each become one statement over all of them (as the
    log's group commit does for appends): what arrives while a statement runs goes with the
    next one."""

    def __init__(self, run: Callable[[list[str]], Awaitable[set[str]]]) -> None:
        self._run = run
        self._pending: dict[str, list[asyncio.Future[bool]]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def __call__(self, run_id: str) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(run_id, []).append(future)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="lease-statements")
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                done = await self._run(sorted(batch))
            except BaseException as exc:
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for run_id, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(run_id in done)


class PostgresLeases:
    """Leases in the table ``run_leases`` of the log's PostgreSQL database. Leases taken or
    given up at the same time (a burst of new runs) share one statement."""

    shared = True

    def __init__(self, pool: asyncpg.Pool, owner: str, lease_seconds: float) -> None:
        self._pool = pool
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._acquire = _Coalesced(self._acquire_all)
        self._release = _Coalesced(self._release_all)

    async def _acquire_all(self, run_ids: list[str]) -> set[str]:
        rows = await self._pool.fetch(_ACQUIRE, run_ids, self.owner, float(self.lease_seconds))
        return {row[0] for row in rows}

    async def _release_all(self, run_ids: list[str]) -> set[str]:
        await self._pool.execute(_RELEASE, run_ids, self.owner)
        return set(run_ids)

    async def acquire(self, run_id: str) -> bool:
        return await self._acquire(run_id)

    async def renew(self) -> set[str]:
        rows = await self._pool.fetch(_RENEW, self.owner, float(self.lease_seconds))
        return {row[0] for row in rows}

    async def release(self, run_id: str) -> None:
        await self._release(run_id)

    async def release_all(self) -> None:
        await self._pool.execute(_RELEASE_ALL, self.owner)

    async def lapsed(self, limit: int = 100) -> list[str]:
        return [row[0] for row in await self._pool.fetch(_LAPSED, limit)]

    async def unheld(self, run_ids: Sequence[str]) -> list[str]:
        if not run_ids:
            return []
        return [row[0] for row in await self._pool.fetch(_UNHELD, list(run_ids))]

    async def forget(self, run_id: str) -> None:
        await self._pool.execute(_FORGET, run_id)

    async def close(self) -> None:
        return None  # the pool belongs to the coordination object that made these leases
