"""The append-only, hash-chained event log: the only source of truth (README.md, "For auditors").

The rest of runlog types against :class:`EventStore` and opens a store with
:func:`open_event_store` (a SQLite path or a ``postgresql://`` URL)."""

from eventstore.backends import (
    Coordination,
    connect_database,
    describe,
    is_postgres_url,
    log_exists,
    open_coordination,
    open_event_store,
    scratch_database,
    startup_lock,
)
from eventstore.copy import copy_log
from eventstore.errors import (
    AppendRefused,
    ConcurrencyError,
    CopyError,
    EventStoreError,
    SchemaVersionError,
    StorageError,
    StorageUnavailable,
    StoreClosedError,
)
from eventstore.leases import Leases, process_id
from eventstore.model import (
    ANY,
    GENESIS_HASH,
    AppendRequest,
    Cap,
    NewEvent,
    RecordedEvent,
    canonical_bytes,
    chain_hash,
    utc_now,
)
from eventstore.projection import Projection
from eventstore.protocol import EventStore
from eventstore.schema import SCHEMA_VERSION
from eventstore.sql import Database, SqlConnection
from eventstore.sqlite import SQLiteEventStore, open_store
from eventstore.store import CommitObserver
from eventstore.verify import VerifyReport, verify_database, verify_events


def __getattr__(name: str) -> object:
    # PostgresEventStore is imported on first use: its drivers cost about 0.3 s of start-up
    # that a SQLite service never needs.
    if name == "PostgresEventStore":
        from eventstore.postgres import PostgresEventStore

        return PostgresEventStore
    raise AttributeError(f"module 'eventstore' has no attribute {name!r}")


__all__ = [
    "ANY",
    "GENESIS_HASH",
    "SCHEMA_VERSION",
    "AppendRefused",
    "AppendRequest",
    "Cap",
    "CommitObserver",
    "ConcurrencyError",
    "Coordination",
    "CopyError",
    "Database",
    "EventStore",
    "EventStoreError",
    "Leases",
    "NewEvent",
    "PostgresEventStore",
    "Projection",
    "RecordedEvent",
    "SQLiteEventStore",
    "SchemaVersionError",
    "SqlConnection",
    "StorageError",
    "StorageUnavailable",
    "StoreClosedError",
    "VerifyReport",
    "canonical_bytes",
    "chain_hash",
    "connect_database",
    "copy_log",
    "describe",
    "is_postgres_url",
    "log_exists",
    "open_coordination",
    "open_event_store",
    "open_store",
    "process_id",
    "scratch_database",
    "startup_lock",
    "utc_now",
    "verify_database",
    "verify_events",
]
