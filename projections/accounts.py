"""Orgs, users and API keys (stream ``org-<id>``): what auth and the admin CLI read."""

from __future__ import annotations

from eventstore import RecordedEvent, SqlConnection
from projections.base import Handler, TableProjection
from runs.events import (
    ApiKeyCreated,
    ApiKeyRevoked,
    DomainEvent,
    OrgCreated,
    UserCreated,
    UserDeleted,
)

__all__ = ["AccountsProjection"]


class AccountsProjection(TableProjection):
    name = "accounts"
    tables: tuple[str, ...] = ("orgs", "users", "api_keys")
    ddl = """
    CREATE TABLE IF NOT EXISTS orgs (
        org_id     TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS users (
        user_id       TEXT PRIMARY KEY,
        org_id        TEXT NOT NULL,
        name          TEXT NOT NULL,
        email         TEXT NOT NULL,
        password_hash TEXT,
        created_at    TEXT NOT NULL,
        deleted_at    TEXT
    );
    CREATE INDEX IF NOT EXISTS users_by_name ON users (name);
    CREATE INDEX IF NOT EXISTS users_by_email ON users (email);
    CREATE TABLE IF NOT EXISTS api_keys (
        key_id     TEXT PRIMARY KEY,
        org_id     TEXT NOT NULL,
        user_id    TEXT NOT NULL,
        key_sha256 TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    """

    def handlers(self) -> dict[type[DomainEvent], Handler]:
        return {
            OrgCreated: self._org_created,
            UserCreated: self._user_created,
            UserDeleted: self._user_deleted,
            ApiKeyCreated: self._key_created,
            ApiKeyRevoked: self._key_revoked,
        }

    @staticmethod
    def _org_created(conn: SqlConnection, e: OrgCreated, r: RecordedEvent) -> None:
        conn.execute("INSERT INTO orgs VALUES (?, ?, ?)", (e.org_id, e.name, r.created_at))

    @staticmethod
    def _user_created(conn: SqlConnection, e: UserCreated, r: RecordedEvent) -> None:
        conn.execute(
            "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (e.user_id, e.org_id, e.name, e.email, e.password_hash, r.created_at),
        )

    @staticmethod
    def _user_deleted(conn: SqlConnection, e: UserDeleted, r: RecordedEvent) -> None:
        conn.execute("UPDATE users SET deleted_at = ? WHERE user_id = ?", (r.created_at, e.user_id))

    @staticmethod
    def _key_created(conn: SqlConnection, e: ApiKeyCreated, r: RecordedEvent) -> None:
        conn.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
            (e.key_id, e.org_id, e.user_id, e.key_sha256, r.created_at),
        )

    @staticmethod
    def _key_revoked(conn: SqlConnection, e: ApiKeyRevoked, r: RecordedEvent) -> None:
        conn.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (r.created_at, e.key_id),
        )
