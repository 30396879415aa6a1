"""The contract between the store and the read models it keeps up to date.

A projection is applied by the store *inside* the transaction that appends the events it
sees, and the store records the projection's checkpoint (last position applied) in that same
transaction, so a projection can never be ahead of or behind the log it was built from.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from eventstore.model import RecordedEvent
from eventstore.sql import SqlConnection

__all__ = ["Projection"]


@runtime_checkable
class Projection(Protocol):
    """A read model maintained from the log, on any backend.

    It sees the database only through :class:`eventstore.sql.SqlConnection` (``?``
    placeholders, portable SQL, portable DDL types), so one definition runs on SQLite and on
    PostgreSQL.

    ``apply`` must be deterministic: it may only use the event (never the clock, random numbers
    or other processes' state), so that rebuilding from the log gives the same rows.

    A projection may also have ``event_types``, the frozenset of the event types its ``apply``
    does anything with: the store's writer then calls it for those only (most events of a run
    are seen by one read model or none). One without the attribute sees every event.
    """

    #: Unique name; the checkpoint row is keyed by it.
    name: str
    #: The tables the projection owns, in creation order (used by rebuild and comparison).
    tables: tuple[str, ...]

    def create(self, conn: SqlConnection) -> None:
        """Create the projection's tables and indexes if they do not exist."""
        ...

    def apply(self, conn: SqlConnection, event: RecordedEvent) -> None:
        """Apply one event; called for every event in log order."""
        ...
