"""Errors raised by the event store.

Every exception the store raises derives from :class:`EventStoreError`; driver errors
(``sqlite3``, ``aiosqlite``) are translated at the boundary with ``raise ... from``.
"""

from __future__ import annotations

__all__ = [
    "AppendRefused",
    "ConcurrencyError",
    "CopyError",
    "EventStoreError",
    "SchemaVersionError",
    "StorageError",
    "StorageUnavailable",
    "StoreClosedError",
]


class EventStoreError(Exception):
    """Root of every error the event store raises."""


class ConcurrencyError(EventStoreError):
    """An append's ``expected_seq`` did not match the stream's last seq; nothing was written."""

    def __init__(self, stream: str, expected_seq: int, actual_seq: int) -> None:
        super().__init__(f"stream {stream!r}: expected last seq {expected_seq}, found {actual_seq}")
        self.stream = stream
        self.expected_seq = expected_seq
        self.actual_seq = actual_seq


class AppendRefused(EventStoreError):
    """An append's cap (:class:`eventstore.Cap`) refused it inside the append transaction;
    nothing was written. ``details["count"]`` is what the cap counted."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details


class StoreClosedError(EventStoreError):
    """The store was closed; no more appends or reads are accepted."""


class StorageError(EventStoreError):
    """The database failed underneath the store (I/O error, corrupt file, projection failure)."""


class SchemaVersionError(EventStoreError):
    """The database was created or upgraded by a newer runlog than this one."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"the database has schema version {found}, but this runlog supports up to"
            f" {supported}: it was written by a newer runlog; upgrade runlog to use it"
        )
        self.found = found
        self.supported = supported


class CopyError(EventStoreError):
    """``copy_log`` refused: the target is not empty, or the source fails verification."""


class StorageUnavailable(StorageError):
    """The database cannot write now (disk full, I/O error, read-only, locked): nothing of the
    append was written, and the same append may succeed once the cause is gone."""
