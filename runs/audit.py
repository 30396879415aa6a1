"""The auditor's commands: verify, rebuild, export. Each works on the log directly (a SQLite file
or a PostgreSQL URL), with or without the server running (reads use one snapshot; rebuild holds
the head of the log)."""

from __future__ import annotations

import heapq
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TextIO

import msgspec

from eventstore import (
    GENESIS_HASH,
    Database,
    Projection,
    connect_database,
    copy_log,
    describe,
    is_postgres_url,
    scratch_database,
    verify_events,
)
from eventstore.schema import iter_events
from eventstore.sql import SqliteDatabase
from projections import all_projections, diff_tables, rebuild, rebuild_in_place
from projections.parallel import ReplayHelper, helper_for
from projections.rebuild import ReplayError
from runs.anchors import anchor_problems, watching
from runs.events import delivery_stream, org_stream, run_stream, thread_stream, webhook_stream

__all__ = [
    "export_events",
    "progress_printer",
    "run_copy",
    "run_head",
    "run_rebuild",
    "run_verify",
]


def progress_printer(
    label: str, total: int, stream: TextIO | None = None
) -> Callable[[int], None] | None:
    """A progress bar on a terminal (``label [#####.....] 52% 520,000/1,000,000 events``);
    nothing when output is redirected, so logs and pipes stay plain."""
    out = stream or sys.stderr
    if not out.isatty() or total <= 0:
        return None

    def show(count: int) -> None:
        done = min(count, total) / total
        bar = "#" * round(done * 30)
        print(
            f"\r{label} [{bar:<30}] {done:4.0%} {count:,}/{total:,} events",
            end="",
            file=out,
            flush=True,
        )

    return show


def event_count(db: Database) -> int:
    row = db.fetch_one("SELECT coalesce(max(position), 0) FROM events")
    return int(row[0]) if row else 0


def run_head(location: str, out: TextIO) -> int:
    """``position hash`` of the log's last event: an anchor to keep somewhere else."""
    db = connect_database(location, read_only=True)
    try:
        row = db.fetch_one("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
    finally:
        db.close()
    position, hash_ = row if row else (0, GENESIS_HASH)
    print(f"{position} {hash_}", file=out)
    return 0


def run_verify(
    location: str,
    out: TextIO,
    expected: Mapping[int, str] | None = None,
    anchor_errors: Sequence[str] = (),
) -> int:
    """Walk the chain; with ``expected`` anchors (position → hash), also check that the log
    still holds each of them. Exit status 1 when anything fails."""
    expected = expected or {}
    seen: dict[int, str] = dict.fromkeys(expected, "")
    db = connect_database(location, read_only=True)
    try:
        db.begin_snapshot()  # one snapshot for the count and the walk
        try:
            progress = progress_printer("verifying", event_count(db))
            report = verify_events(watching(iter_events(db), seen), progress)
        finally:
            db.rollback()
    finally:
        db.close()
    if sys.stderr.isatty():
        print(file=sys.stderr)
    problems = [*anchor_errors, *anchor_problems(report, expected, seen)]
    if report.ok:
        print(
            f"ok: {report.events:,} events in {report.streams:,} streams,"
            f" positions 1..{report.head_position} gapless,"
            f" hash chain intact (head {report.head_hash})",
            file=out,
        )
    else:
        print(f"FAILED at position {report.first_bad_position}: {report.problem}", file=out)
        print(
            f"the first {report.events} events verify (up to position {report.head_position})",
            file=out,
        )
    for problem in problems:
        print(f"ANCHOR FAILED at {problem}", file=out)
    if expected and report.ok and not problems:
        print(f"ok: the log holds all {len(expected)} anchors", file=out)
    return 0 if report.ok and not problems else 1


def run_rebuild(location: str, check: bool, out: TextIO, jobs: int | None = None) -> int:
    try:
        return _rebuild(location, check, out, jobs)
    except ReplayError as exc:
        print(
            f"FAILED at position {exc.position}: the event cannot be applied"
            f" ({exc.__cause__!r}); nothing was changed",
            file=out,
        )
        return 1


#: The schema name under which ``rebuild --check`` attaches its copy of the rebuilt tables.
_ATTACHED = "runlog_scratch"


def _rebuild(location: str, check: bool, out: TextIO, jobs: int | None) -> int:
    projections = all_projections()
    with tempfile.TemporaryDirectory(prefix="runlog-rebuild-") as folder:
        # On a large SQLite log a second process replays part of the projections (forked
        # now, before this one opens the log: projections/parallel.py).
        helper = None
        if not is_postgres_url(location):
            helper = helper_for(location, projections, folder, jobs)
        try:
            if not check:
                return _rebuild_here(location, projections, helper, out)
            differences, count = _check(location, projections, helper)
            processes = _processes(helper)
        finally:
            if helper is not None:
                helper.close()
            if sys.stderr.isatty():  # end the progress bar's line
                print(file=sys.stderr)
    if not differences:
        print(
            f"ok: every projection rebuilt from {count} events equals the live one{processes}",
            file=out,
        )
        return 0
    for table, (only_live, only_rebuilt) in differences.items():
        print(
            f"DIFFERS {table}: {len(only_live)} live rows not in the rebuild,"
            f" {len(only_rebuilt)} rebuilt rows not live",
            file=out,
        )
        for row in only_live[:5]:
            print(f"  live:    {row}", file=out)
        for row in only_rebuilt[:5]:
            print(f"  rebuilt: {row}", file=out)
    return 1


def _rebuild_here(
    location: str, projections: list[Projection], helper: ReplayHelper | None, out: TextIO
) -> int:
    db = connect_database(location)
    try:
        count = rebuild_in_place(
            db, projections, progress_printer("rebuilding", event_count(db)), helper=helper
        )
    finally:
        db.close()
    print(
        f"rebuilt {len(projections)} projections from {count} events{_processes(helper)}",
        file=out,
    )
    return 0


def _processes(helper: ReplayHelper | None) -> str:
    return "" if helper is None else " (in 2 processes)"


def _check(
    location: str, projections: list[Projection], helper: ReplayHelper | None
) -> tuple[dict[str, tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]], int]:
    """The differences between the live tables and a rebuild into scratch tables, and the
    events replayed. The check only reads: the log is opened read-only."""
    db = connect_database(location, read_only=True)
    try:
        with scratch_database(location) as scratch:
            # On SQLite a copy of the rebuilt tables is attached to the log's connection after
            # the replay, so each table is compared by one join inside SQLite (diff_tables).
            pair = None
            if isinstance(db, SqliteDatabase) and isinstance(scratch, SqliteDatabase):
                pair = (db, scratch)
                db.execute(f"ATTACH DATABASE ':memory:' AS {_ATTACHED}")
            db.begin_snapshot()  # one snapshot for the replay and the live tables alike
            try:
                head = event_count(db)
                progress = progress_printer("rebuilding", head)
                mine: Sequence[Projection] = projections
                if helper is not None:
                    mine, progress = helper.begin(head, projections, progress)
                count = rebuild(db, scratch, mine, progress, head=head)
                if pair is not None:
                    pair[0].copy_from(pair[1], _ATTACHED)
                differences = diff_tables(
                    db, scratch, mine, _ATTACHED if pair is not None else None
                )
                if helper is not None:
                    helper.wait(progress)
                    differences.update(helper.compare(db))
            finally:
                db.rollback()
    finally:
        db.close()
    return differences, count


class ExportedEvent(msgspec.Struct):
    """One line of ``runlog export``. ``prev_hash`` is the hash of position - 1, so each line
    can be checked on its own: ``sha256(prev_hash + canonical) == hash``."""

    position: int
    stream: str
    seq: int
    type: str
    data: msgspec.Raw
    created_at: str
    hash: str
    prev_hash: str


def _streams(db: Database, run: str | None, thread: str | None, org: str | None) -> list[str]:
    if run:
        return [run_stream(run)]
    if thread:
        runs = db.fetch_all("SELECT run_id FROM runs WHERE thread_id = ?", (thread,))
        return [thread_stream(thread), *(run_stream(r[0]) for r in runs)]
    assert org is not None
    threads = db.fetch_all("SELECT thread_id FROM threads WHERE org_id = ?", (org,))
    runs = db.fetch_all("SELECT run_id FROM runs WHERE org_id = ?", (org,))
    return [
        org_stream(org),
        *(thread_stream(t[0]) for t in threads),
        *(run_stream(r[0]) for r in runs),
        *_webhook_streams(db, org),
    ]


def _webhook_streams(db: Database, org: str) -> list[str]:
    """The org's webhook endpoints and deliveries (none in a log no server of this version
    has opened yet: their tables are made on start-up)."""
    if not db.table_exists("webhook_deliveries"):
        return []
    endpoints = db.fetch_all("SELECT endpoint_id FROM webhook_endpoints WHERE org_id = ?", (org,))
    deliveries = db.fetch_all("SELECT delivery_id FROM webhook_deliveries WHERE org_id = ?", (org,))
    return [
        *(webhook_stream(e[0]) for e in endpoints),
        *(delivery_stream(d[0]) for d in deliveries),
    ]


_STREAM_EVENTS = (
    "SELECT e.position, e.stream, e.seq, e.type, e.data, e.created_at, e.hash, p.hash"
    " FROM events e LEFT JOIN events p ON p.position = e.position - 1"
    " WHERE e.stream = ? ORDER BY e.seq"
)


def export_events(
    location: str, *, run: str | None = None, thread: str | None = None, org: str | None = None
) -> Iterator[bytes]:
    """JSON lines of the selected streams' events, in position order."""
    db = connect_database(location)
    encoder = msgspec.json.Encoder()
    try:
        db.begin_snapshot()
        per_stream = [
            db.fetch_all(_STREAM_EVENTS, (stream,))
            for stream in dict.fromkeys(_streams(db, run, thread, org))
        ]
        db.rollback()
        for row in heapq.merge(*per_stream, key=lambda r: int(r[0])):
            yield (
                encoder.encode(
                    ExportedEvent(
                        row[0],
                        row[1],
                        row[2],
                        row[3],
                        msgspec.Raw(row[4].encode()),
                        row[5],
                        row[6],
                        row[7] or GENESIS_HASH,
                    )
                )
                + b"\n"
            )
    finally:
        db.close()


def run_copy(source: str, target: str, out: TextIO) -> int:
    """``runlog copy``: the whole log of ``source`` into the empty ``target``."""
    source_db = connect_database(source)
    try:
        target_db = connect_database(target)
        try:
            report = copy_log(
                source_db,
                target_db,
                all_projections(),
                progress_printer("copying", event_count(source_db)),
            )
        finally:
            target_db.close()
    finally:
        source_db.close()
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(
        f"copied {report.events:,} events in {report.streams:,} streams to {describe(target)};"
        f" head position {report.head_position} hash {report.head_hash}",
        file=out,
    )
    return 0
