"""Persona versions as recorded in the log (stream ``persona-<key>``)."""

from __future__ import annotations

import msgspec

from eventstore import RecordedEvent, SqlConnection
from projections.base import Handler, TableProjection
from runs.events import DomainEvent, PersonaRecorded

__all__ = ["PersonasProjection"]


class PersonasProjection(TableProjection):
    name = "personas"
    tables: tuple[str, ...] = ("personas",)
    ddl = """
    CREATE TABLE IF NOT EXISTS personas (
        persona_id     TEXT PRIMARY KEY,
        key            TEXT NOT NULL,
        version        INTEGER NOT NULL,
        content_sha256 TEXT NOT NULL,
        definition     TEXT NOT NULL,
        recorded_at    TEXT NOT NULL
    )
    """

    def handlers(self) -> dict[type[DomainEvent], Handler]:
        return {PersonaRecorded: self._recorded}

    @staticmethod
    def _recorded(conn: SqlConnection, e: PersonaRecorded, r: RecordedEvent) -> None:
        conn.execute(
            "INSERT INTO personas VALUES (?, ?, ?, ?, ?, ?)",
            (
                e.persona_id,
                e.key,
                e.version,
                e.content_sha256,
                msgspec.json.encode(e.definition).decode(),
                r.created_at,
            ),
        )
