"""Copy a whole log from one database to another (any backend to any backend), unchanged.

Positions, seqs, ``created_at``, data and hashes are written as read, so the target's head
hash equals the source's: that equality is the proof of the copy. The source is read in one
snapshot and verified while it is read; the target must be empty, is written in one
transaction (all or nothing), and gets its projections rebuilt from the copied events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import msgspec

from eventstore.errors import CopyError
from eventstore.model import RecordedEvent
from eventstore.projection import Projection
from eventstore.schema import iter_events
from eventstore.sql import Database
from eventstore.verify import VerifyReport, verify_events
from eventstore.writer import BatchWriter

__all__ = ["copy_log"]

_BATCH = 5000


def copy_log(
    source: Database,
    target: Database,
    projections: Sequence[Projection] = (),
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Copy every event of ``source`` into the empty log of ``target``; returns the source's
    verification report (its head is the target's head)."""
    BatchWriter(target, projections).create_schema()
    source.begin_snapshot()
    try:
        target.begin_write()
        try:
            report = _copy(source, target, projections, progress)
            target.commit()
        except BaseException:
            target.rollback()
            raise
    finally:
        source.rollback()
    return report


def _copy(
    source: Database,
    target: Database,
    projections: Sequence[Projection],
    progress: Callable[[int], None] | None,
) -> VerifyReport:
    head, _ = target.head()
    if head != 0 or target.fetch_one("SELECT 1 FROM events LIMIT 1") is not None:
        raise CopyError(
            f"the target already holds a log (head position {head}): copy only into an"
            " empty database"
        )
    buffer: list[tuple[object, ...]] = []

    def written(events: Iterator[RecordedEvent]) -> Iterator[RecordedEvent]:
        for event in events:
            buffer.append(msgspec.structs.astuple(event))  # the events table's column order
            if len(buffer) >= _BATCH:
                target.insert_events(buffer)
                buffer.clear()
            yield event

    # The checker sees each event after it is buffered: if one fails, the whole target
    # transaction is rolled back, so nothing of a broken source is kept.
    report = verify_events(written(iter_events(source, batch=_BATCH)), progress)
    if not report.ok:
        raise CopyError(
            f"the source log fails verification at position {report.first_bad_position}:"
            f" {report.problem}; nothing was copied"
        )
    if buffer:
        target.insert_events(buffer)
    if report.head_position:
        target.set_head(report.head_position, report.head_hash)
    for projection in projections:
        for table in projection.tables:
            target.execute(f'DROP TABLE IF EXISTS "{table}"')
        projection.create(target)
    for event in iter_events(target, batch=_BATCH):
        for projection in projections:
            projection.apply(target, event)
    for projection in projections:
        target.execute(
            "INSERT INTO projection_checkpoints (name, position) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            (projection.name, report.head_position),
        )
    return report
