"""Read queries over the projections. Every REST read goes through here.

One definition for every backend: portable SQL with ``?`` placeholders, sent through the
store's ``fetch_all``/``fetch_one``; text compares bytewise on both engines.

Every query that returns an org's resource takes the caller's ``org_id``: a resource of another
org is simply not found.
"""

from __future__ import annotations

from typing import Any

from eventstore import SCHEMA_VERSION, EventStore, RecordedEvent
from projections.runs import RUN_COLUMNS
from projections.threads import MESSAGE_COLUMNS, message_row, thread_row
from projections.usage import USAGE_GROUPS
from runs.events import MessageAdded, ThreadCreated
from runs.run import LIVE_STATUSES

__all__ = ["Queries"]

_RUN_SELECT = (
    ", ".join(f"r.{c}" for c in RUN_COLUMNS)
    + ", u.name AS created_by_user_name, u.email AS created_by_email"
    " FROM runs r LEFT JOIN users u ON u.user_id = r.created_by_user_id"
)
_RUN_KEYS = (*RUN_COLUMNS, "created_by_user_name", "created_by_email")
_THREAD_KEYS = (
    "id",
    "org_id",
    "created_by_user_id",
    "title",
    "created_at",
    "active_run_id",
    "version",
)
_MESSAGE_KEYS = (
    "id",
    "org_id",
    "thread_id",
    "created_by_user_id",
    "role",
    "content",
    "created_at",
    "run_id",
    "position",
)

_USAGE_KEYS = (
    "key",
    "runs",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "credits_used",
)


def _row(keys: tuple[str, ...], row: tuple[Any, ...] | None) -> dict[str, Any] | None:
    return None if row is None else dict(zip(keys, row, strict=True))


class Queries:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    # -- accounts ---------------------------------------------------------------------------

    async def api_key_by_hash(self, key_sha256: str) -> dict[str, Any] | None:
        row = await self.store.fetch_one(
            "SELECT k.key_id, k.org_id, k.user_id, k.key_sha256, k.revoked_at, u.deleted_at"
            " FROM api_keys k JOIN users u ON u.user_id = k.user_id WHERE k.key_sha256 = ?",
            (key_sha256,),
        )
        return _row(
            ("key_id", "org_id", "user_id", "key_sha256", "revoked_at", "user_deleted_at"), row
        )

    async def api_key_standing(self, key_id: str) -> dict[str, Any] | None:
        """Whether a key still opens doors: its revocation and its user's deletion."""
        row = await self.store.fetch_one(
            "SELECT k.key_id, k.org_id, k.revoked_at, u.deleted_at"
            " FROM api_keys k JOIN users u ON u.user_id = k.user_id WHERE k.key_id = ?",
            (key_id,),
        )
        return _row(("key_id", "org_id", "revoked_at", "user_deleted_at"), row)

    async def user(self, user_id: str) -> dict[str, Any] | None:
        row = await self.store.fetch_one(
            "SELECT user_id, org_id, name, email, password_hash, deleted_at FROM users"
            " WHERE user_id = ?",
            (user_id,),
        )
        return _row(("user_id", "org_id", "name", "email", "password_hash", "deleted_at"), row)

    async def user_by_login(self, login: str) -> dict[str, Any] | None:
        """A live user whose name or email is ``login`` (names and emails are unique)."""
        row = await self.store.fetch_one(
            "SELECT user_id, org_id, name, email, password_hash, deleted_at FROM users"
            " WHERE (name = ? OR email = ?) AND deleted_at IS NULL ORDER BY user_id LIMIT 1",
            (login, login),
        )
        return _row(("user_id", "org_id", "name", "email", "password_hash", "deleted_at"), row)

    async def org(self, org_id: str) -> dict[str, Any] | None:
        row = await self.store.fetch_one(
            "SELECT org_id, name, created_at FROM orgs WHERE org_id = ?", (org_id,)
        )
        return _row(("org_id", "name", "created_at"), row)

    async def org_count(self) -> int:
        row = await self.store.fetch_one("SELECT count(*) FROM orgs")
        return int(row[0]) if row else 0

    async def api_keys(self, org_id: str | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT k.key_id, k.org_id, k.user_id, u.name, k.created_at, k.revoked_at"
            " FROM api_keys k JOIN users u ON u.user_id = k.user_id"
        )
        params: tuple[Any, ...] = ()
        if org_id is not None:
            sql += " WHERE k.org_id = ?"
            params = (org_id,)
        rows = await self.store.fetch_all(sql + " ORDER BY k.key_id", params)
        keys = ("key_id", "org_id", "user_id", "user_name", "created_at", "revoked_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    async def name_or_email_taken(self, name: str, email: str) -> bool:
        row = await self.store.fetch_one(
            "SELECT 1 FROM users WHERE (name = ? OR email = ? OR name = ? OR email = ?)"
            " AND deleted_at IS NULL LIMIT 1",
            (name, email, email, name),
        )
        return row is not None

    # -- threads and messages ---------------------------------------------------------------

    async def thread(self, org_id: str, thread_id: str) -> dict[str, Any] | None:
        row = await self.store.fetch_one(
            "SELECT thread_id, org_id, created_by_user_id, title, created_at, active_run_id,"
            " version FROM threads WHERE thread_id = ? AND org_id = ?",
            (thread_id, org_id),
        )
        return _row(_THREAD_KEYS, row)

    async def thread_exists(self, org_id: str, thread_id: str) -> bool:
        """Whether the org has the thread (a message's check: no row to build)."""
        row = await self.store.fetch_one(
            "SELECT 1 FROM threads WHERE thread_id = ? AND org_id = ?", (thread_id, org_id)
        )
        return row is not None

    @staticmethod
    def created_thread(event: ThreadCreated, recorded: RecordedEvent) -> dict[str, Any]:
        """What :meth:`thread` reads of the thread that ``event`` (recorded as ``recorded``)
        made, from the event itself: the projection wrote that very row (``thread_row``) in
        the append's transaction, and reading it back would cost a query."""
        return dict(zip(_THREAD_KEYS, thread_row(event, recorded), strict=True))

    async def threads(self, org_id: str, limit: int, before: str | None) -> list[dict[str, Any]]:
        rows = await self.store.fetch_all(
            "SELECT thread_id, org_id, created_by_user_id, title, created_at, active_run_id,"
            " version FROM threads WHERE org_id = ? AND thread_id < ?"
            " ORDER BY thread_id DESC LIMIT ?",
            (org_id, before or "\uffff", limit),
        )
        return [dict(zip(_THREAD_KEYS, r, strict=True)) for r in rows]

    async def messages(
        self, thread_id: str, limit: int, before_position: int | None = None
    ) -> list[dict[str, Any]]:
        """The first ``limit`` messages of a thread, oldest first."""
        rows = await self.store.fetch_all(
            "SELECT message_id, org_id, thread_id, created_by_user_id, role, content, created_at,"
            " run_id, position FROM messages WHERE thread_id = ? AND position < ?"
            " ORDER BY position LIMIT ?",
            (thread_id, before_position if before_position is not None else 2**62, limit),
        )
        return [dict(zip(_MESSAGE_KEYS, r, strict=True)) for r in rows]

    async def last_message_position(self, thread_id: str) -> int:
        """The log position of the thread's last message (0 if it has none)."""
        row = await self.store.fetch_one(
            "SELECT coalesce(max(position), 0) FROM messages WHERE thread_id = ?", (thread_id,)
        )
        return int(row[0]) if row else 0

    @staticmethod
    def added_message(event: MessageAdded, recorded: RecordedEvent) -> dict[str, Any]:
        """What :meth:`messages` reads of the message that ``event`` (recorded as ``recorded``)
        added, from the event itself (:meth:`created_thread`)."""
        row = dict(zip(MESSAGE_COLUMNS, message_row(event, recorded), strict=True))
        row["id"] = row.pop("message_id")
        return row

    # -- runs -------------------------------------------------------------------------------

    async def run(self, org_id: str, run_id: str) -> dict[str, Any] | None:
        row = await self.store.fetch_one(
            f"SELECT {_RUN_SELECT} WHERE r.run_id = ? AND r.org_id = ?", (run_id, org_id)
        )
        return _row(_RUN_KEYS, row)

    async def runs(
        self, org_id: str, limit: int, before: str | None, status: str | None
    ) -> list[dict[str, Any]]:
        sql = f"SELECT {_RUN_SELECT} WHERE r.org_id = ? AND r.run_id < ?"
        params: list[Any] = [org_id, before or "\uffff"]
        if status is not None:
            sql += " AND r.status = ?"
            params.append(status)
        rows = await self.store.fetch_all(sql + " ORDER BY r.run_id DESC LIMIT ?", (*params, limit))
        return [dict(zip(_RUN_KEYS, r, strict=True)) for r in rows]

    async def thread_runs(self, thread_id: str, limit: int) -> list[dict[str, Any]]:
        rows = await self.store.fetch_all(
            "SELECT run_id, status, created_at FROM runs WHERE thread_id = ?"
            " ORDER BY run_id DESC LIMIT ?",
            (thread_id, limit),
        )
        return [dict(zip(("run_id", "status", "created_at"), r, strict=True)) for r in rows]

    async def run_status(self, run_id: str, org_id: str | None = None) -> str | None:
        """A run's status (None: no such run in ``org_id``; without it, whatever its org: the
        supervisor's takeover). Where only the status matters (the SSE stream's opening, a
        thread's active run), one column of the run's row, not :meth:`run`'s whole row and
        its creator's name."""
        if org_id is None:
            row = await self.store.fetch_one("SELECT status FROM runs WHERE run_id = ?", (run_id,))
        else:
            row = await self.store.fetch_one(
                "SELECT status FROM runs WHERE run_id = ? AND org_id = ?", (run_id, org_id)
            )
        return None if row is None else str(row[0])

    async def runs_with_status(self, status: str) -> list[str]:
        rows = await self.store.fetch_all(
            "SELECT run_id FROM runs WHERE status = ? ORDER BY run_id", (status,)
        )
        return [r[0] for r in rows]

    async def live_runs_by_status(self) -> dict[str, int]:
        """How many runs of every org are in each live status (a status with none: 0)."""
        rows = await self.store.fetch_all(
            "SELECT status, count(*) FROM runs WHERE status IN"
            f" ({', '.join('?' * len(LIVE_STATUSES))}) GROUP BY status",
            tuple(sorted(LIVE_STATUSES)),
        )
        return dict.fromkeys(sorted(LIVE_STATUSES), 0) | {r[0]: int(r[1]) for r in rows}

    # -- usage ------------------------------------------------------------------------------

    async def usage(
        self, org_id: str, first_day: str, last_day: str, group_by: str
    ) -> list[dict[str, Any]]:
        """The org's usage from ``first_day`` to ``last_day`` (UTC, inclusive), one row per
        value of ``group_by`` (a key of ``USAGE_GROUPS``), ordered by it."""
        column = USAGE_GROUPS[group_by]
        rows = await self.store.fetch_all(
            f"SELECT {column}, sum(runs), sum(input_tokens), sum(output_tokens),"
            " sum(cache_read_tokens), sum(cache_write_tokens), sum(cost_usd), sum(credits_used)"
            f" FROM usage WHERE org_id = ? AND day >= ? AND day <= ? GROUP BY {column}"
            f" ORDER BY {column}",
            (org_id, first_day, last_day),
        )
        # Sums are converted here: engines differ in what sum() of an integer column returns
        # (PostgreSQL answers numeric for bigint).
        return [
            dict(
                zip(
                    _USAGE_KEYS,
                    (r[0], *(int(n) for n in r[1:6]), float(r[6]), int(r[7])),
                    strict=True,
                )
            )
            for r in rows
        ]

    async def persona_hashes(self) -> dict[str, str]:
        rows = await self.store.fetch_all("SELECT persona_id, content_sha256 FROM personas")
        return {r[0]: r[1] for r in rows}

    async def ready(self) -> bool:
        """Whether the database has this runlog's schema version and every projection has
        applied the whole log."""
        return await self.not_ready_reason() is None

    async def not_ready_reason(self) -> str | None:
        """Why the read models cannot serve yet (``None`` when they can)."""
        row = await self.store.fetch_one(
            "SELECT (SELECT coalesce(max(position), 0) FROM events),"
            " (SELECT coalesce(min(position), 0) FROM projection_checkpoints),"
            " (SELECT version FROM runlog_schema WHERE id = 1)"
        )
        if row is None:
            return "starting"
        if row[2] != SCHEMA_VERSION:
            return f"database schema version {row[2]}, this runlog has {SCHEMA_VERSION}"
        if row[0] != row[1]:
            return "projections are catching up with the log"
        return None
