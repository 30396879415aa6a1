"""A rebuild on two cores (SQLite): a forked helper process replays some of the projections into
a scratch file while this process replays the others, both up to the same head.

Projections fall into groups that read no table of another group (``TableProjection.reads``
names the projections whose tables one reads: webhooks reads runs); :func:`split` shares the
groups between the two processes by ``rebuild_cost``. Each process reads only the event types
of its own half, decodes them and applies them, so the two halves of the work run side by side.

The helper is forked before this process opens the log. SQLite keeps, per process, its own
account of the file locks the process holds; a child that inherited the parent's account while
the parent held the log open would trust locks it does not hold, so no connection, nor any of
SQLite's memory of one, crosses the fork. The helper then waits on a pipe for the head to
replay to, opens the log read-only, writes its tables into a scratch file and reports its
progress and its outcome (done, or the position of an event it could not apply) on another
pipe. This process takes the tables afterwards: copied into the log inside its rebuild
transaction (:meth:`ReplayHelper.adopt`), or attached and compared (:meth:`ReplayHelper.compare`,
``rebuild --check``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from eventstore import Database, Projection, connect_database
from eventstore.sql import SqliteDatabase
from projections.base import TableProjection
from projections.rebuild import SQLITE_CACHE_KIB, Progress, ReplayError, diff_tables, rebuild

__all__ = [
    "PARALLEL_FROM_BYTES",
    "HelperFailed",
    "ReplayHelper",
    "helper_for",
    "split",
]

#: A log file smaller than this is rebuilt by one process: forking, and copying the helper's
#: tables back, cost more than they save on a small log (about 100,000 events of real runs).
PARALLEL_FROM_BYTES = 16 * 1024 * 1024
#: The schema name under which the helper's file is attached to the log's connection.
_HELPER_SCHEMA = "runlog_helper"


def split(
    projections: Sequence[Projection],
) -> tuple[list[TableProjection], list[TableProjection]] | None:
    """(this process's projections, the helper's), each in the given order, or None when they
    cannot be split: fewer than two groups, or a projection that is not a TableProjection."""
    tables = [p for p in projections if isinstance(p, TableProjection)]
    if len(tables) != len(projections):
        return None
    # Groups: projections joined by what they read (a small union-find over names).
    parent = {p.name: p.name for p in tables}

    def root(name: str) -> str:
        while parent[name] != name:
            name = parent[name]
        return name

    for projection in tables:
        for other in projection.reads:
            if other in parent:
                parent[root(projection.name)] = root(other)
    groups: dict[str, list[TableProjection]] = {}
    for projection in tables:
        groups.setdefault(root(projection.name), []).append(projection)
    if len(groups) < 2:
        return None
    # The most even split of the groups by cost (there are few: try every one). The first
    # group stays in this process, so a split and its mirror image are not both tried.
    _, *rest = groups.values()
    total = sum(p.rebuild_cost for p in tables)
    best: tuple[int, list[TableProjection]] | None = None
    for mask in range(1, 1 << len(rest)):
        theirs = [p for bit, group in enumerate(rest) if mask >> bit & 1 for p in group]
        gap = abs(total - 2 * sum(p.rebuild_cost for p in theirs))
        if best is None or gap < best[0]:
            best = (gap, theirs)
    assert best is not None
    helper = {id(p) for p in best[1]}
    return [p for p in tables if id(p) not in helper], [p for p in tables if id(p) in helper]


class _Message(msgspec.Struct, omit_defaults=True):
    """One line from the helper: progress (``at``), success (``done``: events replayed), or a
    failure (``replay``: the position of an event it could not apply; neither: anything else),
    with ``cause`` the exception's repr."""

    at: int | None = None
    done: int | None = None
    replay: int | None = None
    cause: str = ""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Message).decode


class HelperFailed(Exception):
    """The helper process stopped without replaying its projections (its exception's repr)."""


class ReplayHelper:
    """A forked process replaying ``projections`` of the log at ``location`` into ``path``.

    ``fork`` it before this process opens the log, ``begin`` it with the head once this process
    holds the head, ``wait`` for it, and ``close`` it in every case (a helper still running is
    stopped)."""

    def __init__(
        self,
        pid: int,
        to_helper: int,
        from_helper: int,
        path: str,
        projections: list[TableProjection],
    ) -> None:
        self.pid = pid
        self.path = path
        self.projections = projections
        self._to_helper = to_helper
        self._from_helper = from_helper
        self._buffer = b""
        self._position = 0
        self._outcome: _Message | None = None
        self._attached = False

    @classmethod
    def fork(cls, location: str, projections: list[TableProjection], path: str) -> ReplayHelper:
        head_read, head_write = os.pipe()
        report_read, report_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the helper: never returns
            status = 1
            try:
                os.close(head_write)
                os.close(report_read)
                status = _helper_main(location, projections, path, head_read, report_write)
            finally:
                os._exit(status)
        os.close(head_read)
        os.close(report_write)
        os.set_blocking(report_read, False)
        return cls(pid, head_write, report_read, path, projections)

    def begin(
        self, head: int, projections: Sequence[Projection], progress: Progress | None
    ) -> tuple[list[Projection], Progress]:
        """Start the helper on the log up to ``head``: (the projections this process replays,
        the progress to report as it does). That progress also takes in the helper's reports
        (so the pipe never fills), and shows on ``progress`` the position both processes have
        replayed up to."""
        os.write(self._to_helper, b"%d\n" % head)
        theirs = {id(p) for p in self.projections}
        mine = [p for p in projections if id(p) not in theirs]
        shown = progress

        def both(position: int) -> None:
            helper = self.position()
            if shown is not None:
                shown(min(position, helper))

        return mine, both

    def position(self) -> int:
        """The last position the helper reported having replayed (read without waiting)."""
        self._read(block=False)
        return self._position

    def wait(self, progress: Progress | None = None) -> int:
        """Block until the helper is done; the events it replayed. Raises ReplayError when it
        could not apply an event, HelperFailed when it failed otherwise or died."""
        while self._outcome is None:
            if not self._read(block=True):
                break
            if progress is not None:
                progress(self._position)
        outcome = self._outcome
        self._reap()
        if outcome is None:
            raise HelperFailed("the rebuild's helper process stopped without a word")
        if outcome.replay is not None:
            raise ReplayError(outcome.replay) from HelperFailed(outcome.cause)
        if outcome.done is None:
            raise HelperFailed(outcome.cause)
        return outcome.done

    def adopt(self, db: Database) -> None:
        """Create the helper's tables in ``db`` (inside its rebuild transaction, where they were
        dropped) and fill them from the helper's file, attached to ``db``'s connection until
        :meth:`detach` (SQLite detaches a database only once the transaction is over)."""
        self._attach(db)
        for projection in self.projections:
            projection.create(db)
            for table in projection.tables:
                db.execute(f'INSERT INTO main."{table}" SELECT * FROM {_HELPER_SCHEMA}."{table}"')

    def compare(
        self, db: Database
    ) -> dict[str, tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
        """The helper's tables against the live ones of ``db`` (``rebuild --check``, in its
        snapshot), as :func:`diff_tables` gives them: compared inside SQLite with the helper's
        file attached, and a table that differs read from the file on a connection of its own."""
        self._attach(db)
        rebuilt = SqliteDatabase(sqlite3.connect(self.path, isolation_level=None))
        try:
            return diff_tables(db, rebuilt, self.projections, _HELPER_SCHEMA)
        finally:
            rebuilt.close()

    def _attach(self, db: Database) -> None:
        db.execute(f"ATTACH DATABASE ? AS {_HELPER_SCHEMA}", (self.path,))
        self._attached = True

    def detach(self, db: Database) -> None:
        """Detach the helper's file from ``db``'s connection, if it was attached."""
        if self._attached:
            db.execute(f"DETACH DATABASE {_HELPER_SCHEMA}")
            self._attached = False

    def close(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap()
        for fd in (self._to_helper, self._from_helper):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._to_helper = self._from_helper = -1

    def _reap(self) -> None:
        if self.pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0

    def _read(self, *, block: bool) -> bool:
        """Take in what the helper wrote; False at the end of its output."""
        os.set_blocking(self._from_helper, block)
        try:
            data = os.read(self._from_helper, 65536)
        except BlockingIOError:
            return True
        if not data:
            return False
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            message = _decode(line)
            if message.at is not None:
                self._position = message.at
            else:
                self._outcome = message
        return True


def _helper_main(
    location: str, projections: list[TableProjection], path: str, head_fd: int, report_fd: int
) -> int:
    def send(message: _Message) -> None:
        os.write(report_fd, _encode(message) + b"\n")

    try:
        with os.fdopen(head_fd, "rb") as heads:
            line = heads.readline()
        if not line:  # this process's parent gave up before starting it
            return 1
        head = int(line)
        source = connect_database(location, read_only=True)
        target = SqliteDatabase(sqlite3.connect(path, isolation_level=None))
        # A scratch file that is thrown away on any failure: no journal, no syncs.
        target.execute("PRAGMA journal_mode = OFF")
        target.execute("PRAGMA synchronous = OFF")
        target.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        source.begin_snapshot()
        count = rebuild(source, target, projections, lambda at: send(_Message(at=at)), head=head)
        target.close()
        send(_Message(done=count))
        return 0
    except ReplayError as exc:
        send(_Message(replay=exc.position, cause=repr(exc.__cause__)))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            send(_Message(cause=repr(exc)))
    return 1


def helper_for(
    location: str, projections: Sequence[Projection], folder: str, jobs: int | None = None
) -> ReplayHelper | None:
    """A helper for a rebuild of the SQLite log at ``location``, forked now into ``folder``, or
    None when the rebuild is done by one process: ``jobs`` 1, projections that do not split,
    or by default (``jobs`` None) a log under PARALLEL_FROM_BYTES, a machine of one core, or a
    system other than Linux (macOS advises against a fork without an exec)."""
    if jobs == 1:
        return None
    if jobs is None:
        if sys.platform != "linux" or len(os.sched_getaffinity(0)) < 2:
            return None
        try:
            if os.path.getsize(location) < PARALLEL_FROM_BYTES:
                return None
        except OSError:  # no log there: let the rebuild say so
            return None
    halves = split(projections)
    if halves is None:
        return None
    return ReplayHelper.fork(location, halves[1], os.path.join(folder, "helper.db"))
