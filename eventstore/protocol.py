"""The storage contract: what the rest of runlog may ask of an event store, on any backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Protocol

from eventstore.live import Deliver, LiveHub
from eventstore.model import AppendRequest, NewEvent, RecordedEvent, WireRow
from eventstore.verify import VerifyReport

__all__ = ["EventStore"]


class EventStore(Protocol):
    """The append-only log. ``SQLiteEventStore`` and ``PostgresEventStore`` implement it and
    pass one contract suite (``tests/eventstore``); nothing outside ``eventstore`` names them
    except the composition point, :func:`eventstore.open_event_store`.

    Reads for the read models (``fetch_all``/``fetch_one``) take portable SQL with ``?``
    placeholders and return plain tuples.
    """

    #: Where the log lives (a path, or a URL without its password), for messages.
    location: str
    live: LiveHub
    #: Called after each commit with its events and its duration in seconds (the service's
    #: metrics; ``eventstore.store.CommitObserver``).
    commit_observers: list[Callable[[Sequence[RecordedEvent], float], None]]
    #: Called when the store lost its wake-ups from other processes and has them again
    #: (PostgreSQL's listening connection, re-established); live subscribers were woken to
    #: read again from their cursors. Never called on SQLite.
    reconnect_observers: list[Callable[[], None]]

    @property
    def closed(self) -> bool: ...

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_seq: int | None = None
    ) -> list[RecordedEvent]: ...

    async def append_many(self, requests: Sequence[AppendRequest]) -> list[RecordedEvent]: ...

    def submit_many(self, requests: Sequence[AppendRequest]) -> asyncio.Future[list[RecordedEvent]]:
        """``append_many`` handed to the writer at once; the future is its outcome."""
        ...

    async def read_stream(
        self, stream: str, after_seq: int = 0, limit: int = 500
    ) -> list[RecordedEvent]: ...

    async def read_stream_wire(
        self, stream: str, after_seq: int = 0, limit: int = 500
    ) -> list[WireRow]:
        """``read_stream`` as :data:`~eventstore.model.WireRow` tuples."""
        ...

    async def read_all(self, after_position: int = 0, limit: int = 500) -> list[RecordedEvent]: ...

    def subscribe(
        self, stream: str, after_seq: int = 0, batch_limit: int = 500
    ) -> AsyncGenerator[RecordedEvent, None]: ...

    def subscribe_batches(
        self,
        stream: str,
        after_seq: int = 0,
        batch_limit: int = 500,
        deliver: Deliver | None = None,
    ) -> AsyncGenerator[list[RecordedEvent], None]: ...

    async def head(self) -> int: ...

    async def last_seq(self, stream: str) -> int: ...

    async def verify(self) -> VerifyReport: ...

    async def check_writable(self) -> str | None:
        """``None`` while the log can be written, else why not (disk full, I/O error, the
        database gone): a known fault is probed again with a commit that changes nothing."""
        ...

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None: ...

    async def close(self) -> None: ...
