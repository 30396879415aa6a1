"""Failure counts shared by every process on one PostgreSQL database (the login throttle).

Like leases, this is coordination, not history: a table ``login_failures(key, failed_at)``
outside the log, one row per failed attempt, pruned by the throttle's window. The policy
(how many failures are free, how the delays grow) stays with the caller
(``runs/ratelimit.py``); this module only counts, on the database's clock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

__all__ = ["FailureCounts"]

THROTTLE_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS login_failures (
        key       TEXT COLLATE "C" NOT NULL,
        failed_at TIMESTAMPTZ NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS login_failures_by_key ON login_failures (key, failed_at)",
    "CREATE INDEX IF NOT EXISTS login_failures_by_time ON login_failures (failed_at)",
]

_RECENT = """
SELECT key, count(*), extract(epoch FROM now() - max(failed_at))::float8
FROM login_failures
WHERE key = ANY($1::text[]) AND failed_at > now() - make_interval(secs => $2)
GROUP BY key"""
_ADD = "INSERT INTO login_failures (key, failed_at) SELECT unnest($1::text[]), now()"
_PRUNE = "DELETE FROM login_failures WHERE failed_at <= now() - make_interval(secs => $1)"
_CLEAR = "DELETE FROM login_failures WHERE key = $1"
#: Old rows are deleted at most this often (seconds), by whichever process records a failure.
_PRUNE_EVERY_S = 30.0


class FailureCounts:
    """Failures per key within a window, in the table ``login_failures``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pruned_at = 0.0

    async def recent(self, keys: Sequence[str], window_s: float) -> dict[str, tuple[int, float]]:
        """For each key with failures in the last ``window_s`` seconds: how many, and the
        seconds since the last one."""
        rows = await self._pool.fetch(_RECENT, list(keys), float(window_s))
        return {row[0]: (int(row[1]), float(row[2])) for row in rows}

    async def add(self, keys: Sequence[str], window_s: float) -> None:
        """Count a failure against each key (and drop rows older than the window)."""
        await self._pool.execute(_ADD, list(keys))
        now = time.monotonic()
        if now - self._pruned_at >= _PRUNE_EVERY_S:
            self._pruned_at = now
            await self._pool.execute(_PRUNE, float(window_s))

    async def clear(self, key: str) -> None:
        await self._pool.execute(_CLEAR, key)
