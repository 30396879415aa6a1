"""The append-only, hash-chained event log: the only source of truth.

See docs/architecture.md, "The log".
"""

from eventstore.errors import (
    ConcurrencyError,
    EventStoreError,
    StorageError,
    StorageUnavailable,
    StoreClosedError,
)
from eventstore.model import (
    ANY,
    GENESIS_HASH,
    AppendRequest,
    NewEvent,
    RecordedEvent,
    canonical_bytes,
    chain_hash,
    utc_now,
)
from eventstore.projection import Projection
from eventstore.sqlite import SQLiteEventStore, open_store
from eventstore.verify import VerifyReport, verify_events

__all__ = [
    "ANY",
    "GENESIS_HASH",
    "AppendRequest",
    "ConcurrencyError",
    "EventStoreError",
    "NewEvent",
    "Projection",
    "RecordedEvent",
    "SQLiteEventStore",
    "StorageError",
    "StorageUnavailable",
    "StoreClosedError",
    "VerifyReport",
    "canonical_bytes",
    "chain_hash",
    "open_store",
    "utc_now",
    "verify_events",
]
