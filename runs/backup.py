"""``runlog backup``: a consistent copy of a live SQLite log, verified before it is kept.

The copy is SQLite's online backup API run in one step: it reads the whole file inside one
read transaction, which in WAL mode is a snapshot that does not block the server's writers, so
the copy holds the log (and the projections applied with it) exactly as of one commit. It is
written to a temporary file beside the target, its hash chain is walked, and only then is it
linked to the target name (which must not exist, so a backup never overwrites anything).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import TextIO

from eventstore import is_postgres_url
from eventstore.schema import connect
from eventstore.sql import SqliteDatabase
from eventstore.verify import verify_database

__all__ = ["is_database_url", "run_backup"]


def is_database_url(location: str) -> bool:
    return is_postgres_url(location)


def run_backup(source: str, target: str, out: TextIO, err: TextIO) -> int:
    """Copy ``source`` to ``target``; 0 when the copy verifies, 1 when it does not, 2 when
    nothing could be copied."""
    if is_database_url(source):
        print(
            "error: runlog backup copies a SQLite log; for PostgreSQL use pg_dump"
            " (or runlog copy to another log)",
            file=err,
        )
        return 2
    destination = Path(target)
    if destination.exists():
        print(f"error: {target} exists; a backup never overwrites a file", file=err)
        return 2
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    try:
        _copy(source, partial)
        db = SqliteDatabase(connect(str(partial)))
        try:
            report = verify_database(db)
        finally:
            db.close()
        if not report.ok:
            print(
                f"error: the copy does not verify at position {report.first_bad_position}:"
                f" {report.problem}; {target} was not written",
                file=err,
            )
            return 1
        _single_file(partial)
        os.link(partial, destination)  # fails rather than replace a file made meanwhile
        _fsync_dir(destination.parent)
    except FileExistsError:
        print(f"error: {target} exists; a backup never overwrites a file", file=err)
        return 2
    except (OSError, sqlite3.Error) as exc:
        print(f"error: backup of {source} to {target} failed: {exc}", file=err)
        return 2
    finally:
        for leftover in (partial, *(Path(f"{partial}{s}") for s in ("-wal", "-shm"))):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    print(
        f"ok: {target} holds {report.events:,} events, verified;"
        f" head position {report.head_position}, head hash {report.head_hash}",
        file=out,
    )
    return 0


def _copy(source: str, partial: Path) -> None:
    src = connect(source)
    try:
        dst = sqlite3.connect(partial, isolation_level=None)
        try:
            # pages=-1: every page in one step, so the copy is one snapshot of the source.
            src.backup(dst, pages=-1)
        finally:
            dst.close()
    finally:
        src.close()


def _single_file(path: Path) -> None:
    """Fold any WAL into the file and leave it in rollback mode: a backup is one self-contained
    file to move around (the server turns WAL back on when it opens it)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
