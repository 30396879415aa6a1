"""A small base for table projections: dispatch by event type, decode once, skip the rest."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from eventstore import RecordedEvent
from runs.events import DomainEvent, decode_event

__all__ = ["TableProjection"]

Handler = Callable[[sqlite3.Connection, Any, RecordedEvent], None]


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

    def create(self, conn: sqlite3.Connection) -> None:
        for statement in self.ddl.split(";"):
            if statement.strip():
                conn.execute(statement)

    def apply(self, conn: sqlite3.Connection, event: RecordedEvent) -> None:
        handler = self._handlers.get(event.type)
        if handler is not None:
            handler(conn, decode_event(event), event)
