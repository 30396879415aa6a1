"""Walk a log and check everything an auditor relies on: positions, seqs and the hash chain."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgspec

from eventstore.model import GENESIS_HASH, RecordedEvent, canonical_bytes, chain_hash
from eventstore.schema import iter_events
from eventstore.sql import Database

__all__ = ["VerifyReport", "verify_database", "verify_events"]

_BATCH = 5000


class VerifyReport(msgspec.Struct, frozen=True):
    """The outcome of a walk: ``first_bad_position`` is ``None`` when the log is intact."""

    events: int
    streams: int
    head_position: int
    head_hash: str
    first_bad_position: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad_position is None


def verify_events(
    events: Iterable[RecordedEvent],
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check events given in position order (the whole log, from position 1)."""
    previous_hash = GENESIS_HASH
    expected_position = 1
    last_seq: dict[str, int] = {}
    count = 0
    for event in events:
        count += 1
        problem = None
        if event.position != expected_position:
            problem = (
                f"position {event.position} found where {expected_position} was expected"
                " (an event is missing or out of order)"
            )
        else:
            want_seq = last_seq.get(event.stream, 0) + 1
            if event.seq != want_seq:
                problem = (
                    f"stream {event.stream!r} has seq {event.seq} where {want_seq} was expected"
                )
            else:
                digest = chain_hash(
                    previous_hash,
                    canonical_bytes(
                        event.position,
                        event.stream,
                        event.seq,
                        event.type,
                        event.data,
                        event.created_at,
                    ),
                )
                if digest != event.hash:
                    problem = "hash does not match the event's content and the previous hash"
        if problem is not None:
            return VerifyReport(
                events=count - 1,
                streams=len(last_seq),
                head_position=expected_position - 1,
                head_hash=previous_hash,
                first_bad_position=expected_position
                if event.position > expected_position
                else event.position,
                problem=problem,
            )
        last_seq[event.stream] = event.seq
        previous_hash = event.hash
        expected_position += 1
        if progress is not None and count % _BATCH == 0:
            progress(count)
    if progress is not None:
        progress(count)
    return VerifyReport(
        events=count,
        streams=len(last_seq),
        head_position=expected_position - 1,
        head_hash=previous_hash,
    )


def verify_database(db: Database, progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Verify the log behind a connection of any backend, read in one snapshot."""
    db.begin_snapshot()
    try:
        return verify_events(iter_events(db), progress)
    finally:
        db.rollback()
