"""Value types shared by every event store backend."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import msgspec

__all__ = [
    "ANY",
    "GENESIS_HASH",
    "AppendRequest",
    "Cap",
    "NewEvent",
    "RecordedEvent",
    "WireRow",
    "canonical_bytes",
    "chain_hash",
    "utc_now",
    "utc_second",
]

#: ``expected_seq`` value that skips the optimistic concurrency check.
ANY: None = None

#: The "previous hash" of the first event in a log.
GENESIS_HASH = "0" * 64

#: An event as ``read_stream_wire`` gives it: ``(seq, type, data, created_at)``, all four as
#: the bytes that spell them: the seq in decimal digits, the three texts exactly as stored, in
#: UTF-8.
WireRow = tuple[bytes, bytes, bytes, bytes]


class NewEvent(msgspec.Struct, frozen=True):
    """An event to append: its type and its payload, already encoded as compact JSON."""

    type: str
    data: bytes


class AppendRequest(msgspec.Struct, frozen=True):
    """One stream's share of an (atomic, possibly multi-stream) append.

    ``expected_seq`` is the stream's current last seq (0: the stream must not exist yet) or
    :data:`ANY` to append whatever the stream holds.

    ``cap``, when given, limits how many appends of its kind may exist: the writer decides it
    inside the append transaction, with the head locked (see :class:`Cap`).
    """

    stream: str
    events: list[NewEvent]
    expected_seq: int | None = ANY
    cap: Cap | None = None


class Cap(msgspec.Struct, frozen=True):
    """Refuse an append (:class:`eventstore.AppendRefused`) once ``limit`` things of a kind
    exist, counted inside the append transaction.

    ``count_sql`` (portable SQL with ``?`` placeholders over the read models, one number)
    counts them as committed; the writer runs it with the head locked (on PostgreSQL the head
    row serialises the writers of every process), once per ``key`` and batch, and adds the
    earlier appends of the same batch with the same cap that it accepted. Whatever lowers the
    count in the same batch is not subtracted, so a cap errs only towards refusing an append
    that raced with it. A decision like "at most N live runs per org" is exact this way on
    every backend and across processes."""

    key: str
    count_sql: str
    params: tuple[Any, ...]
    limit: int


class RecordedEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as the log holds it.

    ``data`` is the JSON text exactly as stored (and hashed); decode it with the domain's types.
    """

    position: int
    stream: str
    seq: int
    type: str
    data: str
    created_at: str
    hash: str


_encode = msgspec.json.encode


def canonical_bytes(
    position: int, stream: str, seq: int, type: str, data: str, created_at: str
) -> bytes:
    """The bytes an event's hash covers: a compact JSON array of every stored field.

    Documented in the README so an auditor can recompute the chain with any JSON library:
    ``[position, stream, seq, type, created_at, data]`` with ``data`` as a JSON string.
    """
    return _encode([position, stream, seq, type, created_at, data])


def chain_hash(previous_hash: str, canonical: bytes) -> str:
    """``sha256(previous hash bytes + canonical bytes)`` as lowercase hex."""
    return hashlib.sha256(bytes.fromhex(previous_hash) + canonical).hexdigest()


#: The latest second :func:`utc_second` spelt, and its text: replaced as one tuple, so any
#: thread reads a matching pair.
_second_text: tuple[int, str] = (-1, "")


def utc_second(second: int) -> str:
    """A Unix second as UTC ``2024-01-01T00:00:00``. The text of the latest second asked for is
    kept: formatting a time costs some twenty times more than reusing it, and every commit
    and every log line asks, almost always for the current second."""
    global _second_text  # noqa: PLW0603 - a process-wide cache of one entry
    cached, text = _second_text
    if second != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_text = (second, text)
    return text


def utc_now() -> str:
    """The current UTC time as RFC 3339 with milliseconds, e.g. ``2024-01-01T00:00:00.000Z``."""
    second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    return f"{utc_second(second)}.{nanoseconds // 1_000_000:03d}Z"
