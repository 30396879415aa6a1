"""A small base for table projections: dispatch by event type, decode once, skip the rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eventstore import RecordedEvent, SqlConnection
from runs.events import DomainEvent, decode_event

__all__ = ["TableProjection"]

Handler = Callable[[SqlConnection, Any, RecordedEvent], None]


class TableProjection:
    """Subclasses set ``name``, ``tables``, ``ddl`` and map event classes to handlers.

    Handlers receive the decoded event and the recorded one (for ``created_at``, ``seq``);
    they must use nothing else, so a rebuild from the log gives identical rows.
    """

    name: str = ""
    tables: tuple[str, ...] = ()
    ddl: str = ""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {
            cls.TYPE: handler for cls, handler in self.handlers().items()
        }

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
            handler(conn, decode_event(event), event)
