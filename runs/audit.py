"""The auditor's commands: verify, rebuild, export. Each works on the log file directly, with or
without the server running (reads use one snapshot; rebuild takes the write lock)."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TextIO

import msgspec

from eventstore import GENESIS_HASH
from eventstore.schema import connect, iter_events
from eventstore.verify import verify_events
from projections import all_projections, diff_tables, rebuild, rebuild_in_place
from projections.rebuild import ReplayError
from runs.anchors import anchor_problems, watching
from runs.events import delivery_stream, org_stream, run_stream, thread_stream, webhook_stream

__all__ = [
    "export_events",
    "open_read_only",
    "progress_printer",
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


def _event_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0])


def open_read_only(path: str) -> sqlite3.Connection:
    """The log opened for reading only: it is never written, not even its WAL. A copy on
    read-only media (where SQLite cannot make its ``-shm`` file) is opened as immutable."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True, isolation_level=None)
    return conn


def run_head(path: str, out: TextIO) -> int:
    """``position hash`` of the log's last event: an anchor to keep somewhere else."""
    conn = open_read_only(path)
    try:
        row = conn.execute(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    position, hash_ = row if row else (0, GENESIS_HASH)
    print(f"{position} {hash_}", file=out)
    return 0


def run_verify(
    path: str,
    out: TextIO,
    expected: Mapping[int, str] | None = None,
    anchor_errors: Sequence[str] = (),
) -> int:
    """Walk the chain; with ``expected`` anchors (position → hash), also check that the log
    still holds each of them. Exit status 1 when anything fails."""
    expected = expected or {}
    seen: dict[int, str] = dict.fromkeys(expected, "")
    conn = open_read_only(path)
    try:
        conn.execute("BEGIN")  # one snapshot for the count and the walk
        progress = progress_printer("verifying", _event_count(conn))
        report = verify_events(watching(iter_events(conn), seen), progress)
        conn.execute("COMMIT")
    finally:
        conn.close()
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


def run_rebuild(path: str, check: bool, out: TextIO) -> int:
    try:
        return _rebuild(path, check, out)
    except ReplayError as exc:
        print(
            f"FAILED at position {exc.position}: the event cannot be applied"
            f" ({exc.__cause__!r}); nothing was changed",
            file=out,
        )
        return 1


def _rebuild(path: str, check: bool, out: TextIO) -> int:
    projections = all_projections()
    # The check only reads (it works on a read-only copy); a rebuild writes the projections.
    conn = open_read_only(path) if check else connect(path)
    try:
        if not check:
            count = rebuild_in_place(
                conn, projections, progress_printer("rebuilding", _event_count(conn))
            )
            print(f"rebuilt {len(projections)} projections from {count} events", file=out)
            return 0
        scratch = sqlite3.connect(":memory:", isolation_level=None)
        conn.execute("BEGIN")  # one snapshot for the replay and the live tables alike
        try:
            count = rebuild(
                conn, scratch, projections, progress_printer("rebuilding", _event_count(conn))
            )
            differences = diff_tables(conn, scratch, projections)
        finally:
            conn.execute("COMMIT")
    finally:
        conn.close()
    if not differences:
        print(f"ok: every projection rebuilt from {count} events equals the live one", file=out)
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


def _streams(
    conn: sqlite3.Connection, run: str | None, thread: str | None, org: str | None
) -> list[str]:
    if run:
        return [run_stream(run)]
    if thread:
        runs = conn.execute("SELECT run_id FROM runs WHERE thread_id = ?", (thread,)).fetchall()
        return [thread_stream(thread), *(run_stream(r[0]) for r in runs)]
    assert org is not None
    threads = conn.execute("SELECT thread_id FROM threads WHERE org_id = ?", (org,)).fetchall()
    runs = conn.execute("SELECT run_id FROM runs WHERE org_id = ?", (org,)).fetchall()
    return [
        org_stream(org),
        *(thread_stream(t[0]) for t in threads),
        *(run_stream(r[0]) for r in runs),
        *_webhook_streams(conn, org),
    ]


def _webhook_streams(conn: sqlite3.Connection, org: str) -> list[str]:
    """The org's webhook endpoints and deliveries (none in a log no server of this version
    has opened yet: their tables are made on start-up)."""
    known = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'webhook_deliveries'"
    ).fetchone()[0]
    if not known:
        return []
    endpoints = conn.execute(
        "SELECT endpoint_id FROM webhook_endpoints WHERE org_id = ?", (org,)
    ).fetchall()
    deliveries = conn.execute(
        "SELECT delivery_id FROM webhook_deliveries WHERE org_id = ?", (org,)
    ).fetchall()
    return [
        *(webhook_stream(e[0]) for e in endpoints),
        *(delivery_stream(d[0]) for d in deliveries),
    ]


def export_events(
    path: str, *, run: str | None = None, thread: str | None = None, org: str | None = None
) -> Iterator[bytes]:
    """JSON lines of the selected streams' events, in position order."""
    conn = connect(path)
    encoder = msgspec.json.Encoder()
    try:
        conn.execute("BEGIN")
        streams = _streams(conn, run, thread, org)
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS export_streams (stream TEXT PRIMARY KEY)")
        conn.execute("DELETE FROM export_streams")
        conn.executemany("INSERT OR IGNORE INTO export_streams VALUES (?)", [(s,) for s in streams])
        cursor = conn.execute(
            "SELECT e.position, e.stream, e.seq, e.type, e.data, e.created_at, e.hash,"
            " coalesce((SELECT p.hash FROM events p WHERE p.position = e.position - 1),"
            " ?) FROM events e JOIN export_streams s ON s.stream = e.stream ORDER BY e.position",
            (GENESIS_HASH,),
        )
        for row in cursor:
            yield (
                encoder.encode(
                    ExportedEvent(
                        row[0], row[1], row[2], row[3], msgspec.Raw(row[4].encode()), *row[5:]
                    )
                )
                + b"\n"
            )
        conn.execute("COMMIT")
    finally:
        conn.close()
