"""The runs read model with accounting (stream ``run-<id>``).

Written with plain SQL per event type; a test checks it against the pure fold in
``runs.run`` for random command sequences, so the two implementations keep each other honest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventstore import Cap, RecordedEvent, SqlConnection
from projections.base import Decoded, Handler, RowCache, TableProjection, chunk_runs
from runs.events import (
    RUN_STREAM_PREFIX,
    DomainEvent,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunInputProvided,
    RunStarted,
    RunUsage,
    RunWaitingForInput,
    run_id_of,
)
from runs.run import LIVE_STATUSES, credits_for, ms_between

__all__ = ["RUN_COLUMNS", "RunsProjection", "live_runs_below"]

_LIVE_COUNT = (
    "SELECT count(*) FROM runs WHERE org_id = ? AND status IN"
    f" ({', '.join('?' * len(LIVE_STATUSES))})"
)


def live_runs_below(org_id: str, limit: int) -> Cap:
    """The cap on an org's live runs, for the append that starts a run (``AppendRequest.cap``):
    the writer counts them inside the append transaction with the head locked, so on every
    backend, and across processes on PostgreSQL, the count includes every run started before
    (docs/architecture.md, "Limits")."""
    return Cap(f"live-runs:{org_id}", _LIVE_COUNT, (org_id, *sorted(LIVE_STATUSES)), limit)


RUN_COLUMNS = (
    "run_id",
    "org_id",
    "thread_id",
    "status",
    "route_id",
    "model",
    "persona_id",
    "trace_id",
    "created_by_user_id",
    "created_at",
    "completed_at",
    "failed_at",
    "cancelled_at",
    "duration_ms",
    "total_input_tokens",
    "total_output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "total_cost_usd",
    "cache_hit_rate",
    "credits_multiplier",
    "credits_used",
    "error_class",
    "error_message",
    "usage_estimated",
    "retry_of",
)


_CALL_COLUMNS = (
    "run_id",
    "call",
    "estimated",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
)
_COLUMN = {name: index for index, name in enumerate(RUN_COLUMNS)}
_STATUS = _COLUMN["status"]
_CREATED_AT = _COLUMN["created_at"]
_DURATION = _COLUMN["duration_ms"]
_ERROR_CLASS = _COLUMN["error_class"]
_ERROR_MESSAGE = _COLUMN["error_message"]
_INPUTS = _COLUMN["total_input_tokens"]
_MULTIPLIER = _COLUMN["credits_multiplier"]
_RETRY_OF = _COLUMN["retry_of"]
_CREDITS = _COLUMN["credits_used"]
_USAGE_ESTIMATED = _COLUMN["usage_estimated"]
_ENDED_AT = {
    "completed": _COLUMN["completed_at"],
    "failed": _COLUMN["failed_at"],
    "cancelled": _COLUMN["cancelled_at"],
}
_ENDS = {RunCompleted.TYPE: "completed", RunFailed.TYPE: "failed", RunCancelled.TYPE: "cancelled"}
_PAUSES = {RunWaitingForInput.TYPE: "waiting_for_input", RunInputProvided.TYPE: "running"}


class RunsProjection(TableProjection):
    name = "runs"
    rebuild_cost = 3
    tables: tuple[str, ...] = ("runs", "run_call_usage")
    ddl = """
    CREATE TABLE IF NOT EXISTS runs (
        run_id              TEXT PRIMARY KEY,
        org_id              TEXT NOT NULL,
        thread_id           TEXT NOT NULL,
        status              TEXT NOT NULL,
        route_id            TEXT NOT NULL,
        model               TEXT NOT NULL,
        persona_id          TEXT,
        trace_id            TEXT NOT NULL,
        created_by_user_id  TEXT NOT NULL,
        created_at          TEXT NOT NULL,
        completed_at        TEXT,
        failed_at           TEXT,
        cancelled_at        TEXT,
        duration_ms         INTEGER,
        total_input_tokens  INTEGER NOT NULL DEFAULT 0,
        total_output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens   INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens  INTEGER NOT NULL DEFAULT 0,
        total_cost_usd      REAL NOT NULL DEFAULT 0,
        cache_hit_rate      REAL,
        credits_multiplier  REAL NOT NULL,
        credits_used        INTEGER NOT NULL DEFAULT 0,
        error_class         TEXT,
        error_message       TEXT,
        usage_estimated     INTEGER NOT NULL DEFAULT 0,
        retry_of            TEXT
    );
    -- One row per model call with usage: whether what is counted for it is an estimate, and
    -- the estimate's figures, taken back when the provider's own usage of the call arrives.
    CREATE TABLE IF NOT EXISTS run_call_usage (
        run_id              TEXT NOT NULL,
        call                INTEGER NOT NULL,
        estimated           INTEGER NOT NULL,
        input_tokens        INTEGER NOT NULL,
        output_tokens       INTEGER NOT NULL,
        cache_read_tokens   INTEGER NOT NULL,
        cache_write_tokens  INTEGER NOT NULL,
        cost_usd            REAL NOT NULL,
        PRIMARY KEY (run_id, call)
    );
    CREATE INDEX IF NOT EXISTS runs_by_org ON runs (org_id, run_id);
    CREATE INDEX IF NOT EXISTS runs_by_org_status ON runs (org_id, status, run_id);
    CREATE INDEX IF NOT EXISTS runs_by_thread ON runs (thread_id, run_id);
    -- Runs by status across orgs: the supervisor's resume at start-up and takeover, the metrics
    -- gauges.
    -- (An index added here is created when a store next opens an older database.)
    CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, run_id)
    """

    def create(self, conn: SqlConnection) -> None:
        present = set(conn.table_columns("runs"))
        if present and not present >= set(RUN_COLUMNS):
            # The table of an older version (before estimated usage and retries): drop it and
            # let the store replay the whole log into the new shape on this start, as
            # ``runlog rebuild`` would.
            for table in self.tables:
                conn.execute(f'DROP TABLE IF EXISTS "{table}"')
            conn.execute(
                "UPDATE projection_checkpoints SET position = 0 WHERE name = ?", (self.name,)
            )
        super().create(conn)

    def handlers(self) -> dict[type[DomainEvent], Handler]:
        return {
            RunStarted: self._started,
            RunUsage: self._usage,
            RunWaitingForInput: self._status("waiting_for_input"),
            RunInputProvided: self._status("running"),
            RunCompleted: self._ended("completed"),
            RunFailed: self._ended("failed"),
            RunCancelled: self._ended("cancelled"),
        }

    def apply_many(self, conn: SqlConnection, events: Sequence[Decoded]) -> None:
        """The handlers below, on the chunk's rows in memory (``TableProjection``)."""
        runs = RowCache("runs", RUN_COLUMNS)
        calls = RowCache("run_call_usage", _CALL_COLUMNS, key_size=2)
        types = self.event_types
        events = [pair for pair in events if pair[0].type in types]
        ids, started = chunk_runs(events)
        prefix = RUN_STREAM_PREFIX
        runs.absent(started)
        calls.absent(started)
        runs.load(conn, ids)
        calls.load(conn, ids)
        get = runs.rows.get
        for r, e in events:
            kind = r.type
            if isinstance(e, RunUsage):
                run_id = r.stream.removeprefix(prefix)
                row = get(run_id)
                assert row is not None, f"run.usage before run.started in {r.stream}"
                _count_usage(row, calls, run_id, e)
            elif isinstance(e, RunStarted):
                if get(e.run_id) is not None:
                    raise ValueError(f"run {e.run_id} started twice")
                runs.put(_new_run(e, r.created_at))
            elif kind in _PAUSES:
                row = get(r.stream.removeprefix(prefix))
                if row is not None:
                    row[_STATUS] = _PAUSES[kind]
            else:
                row = get(r.stream.removeprefix(prefix))
                assert row is not None, f"{kind} before run.started in {r.stream}"
                status = _ENDS[kind]
                row[_STATUS] = status
                row[_ENDED_AT[status]] = r.created_at
                row[_DURATION] = ms_between(row[_CREATED_AT], r.created_at)
                failed = e if isinstance(e, RunFailed) else None
                row[_ERROR_CLASS] = None if failed is None else failed.error_class
                row[_ERROR_MESSAGE] = None if failed is None else failed.message
        runs.flush(conn)
        calls.flush(conn)

    @staticmethod
    def _started(conn: SqlConnection, e: RunStarted, r: RecordedEvent) -> None:
        conn.execute(
            "INSERT INTO runs (run_id, org_id, thread_id, status, route_id, model, persona_id,"
            " trace_id, created_by_user_id, created_at, credits_multiplier, retry_of)"
            " VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                e.run_id,
                e.org_id,
                e.thread_id,
                e.route_id,
                e.model,
                e.persona_id,
                e.trace_id,
                e.created_by_user_id,
                r.created_at,
                e.credits_multiplier,
                e.retry_of,
            ),
        )

    @staticmethod
    def _usage(conn: SqlConnection, e: RunUsage, r: RecordedEvent) -> None:
        # The same accounting as ``runs.run.evolve``: each model call is counted once, its
        # reported usage replacing an estimate of it.
        run_id = run_id_of(r.stream)
        # The run's totals and what is counted for this call (NULLs: nothing yet), at once.
        row = conn.fetch_one(
            "SELECT r.total_input_tokens, r.total_output_tokens, r.cache_read_tokens,"
            " r.cache_write_tokens, r.total_cost_usd, r.credits_multiplier, r.usage_estimated,"
            " c.estimated, c.input_tokens, c.output_tokens, c.cache_read_tokens,"
            " c.cache_write_tokens, c.cost_usd FROM runs r LEFT JOIN run_call_usage c"
            " ON c.run_id = r.run_id AND c.call = ? WHERE r.run_id = ?",
            (e.call, run_id),
        )
        assert row is not None, f"run.usage before run.started in {r.stream}"
        inputs, outputs, reads, writes, cost, multiplier, estimated = row[:7]
        known = None if row[7] is None else row[7:]
        if e.estimated:
            if known is not None:
                return  # the call is counted already
            conn.execute(_INSERT_CALL, _estimated_call(run_id, e))
            estimated = 1
        elif known is None:
            conn.execute(_INSERT_CALL, _reported_call(run_id, e))
        elif known[0]:
            inputs -= known[1]
            outputs -= known[2]
            reads -= known[3]
            writes -= known[4]
            cost -= known[5]
            conn.execute(
                "UPDATE run_call_usage SET estimated = 0, input_tokens = 0, output_tokens = 0,"
                " cache_read_tokens = 0, cache_write_tokens = 0, cost_usd = 0"
                " WHERE run_id = ? AND call = ?",
                (run_id, e.call),
            )
            # Whether another call is still an estimate. EXISTS is an integer on SQLite and a
            # boolean on PostgreSQL: stored as 0 or 1.
            still_estimated = conn.fetch_one(
                "SELECT EXISTS (SELECT 1 FROM run_call_usage WHERE run_id = ? AND estimated = 1)",
                (run_id,),
            )
            estimated = int(bool(still_estimated and still_estimated[0]))
        # Otherwise no call's estimate was taken back: usage_estimated stands, or is now 1.
        inputs += e.input_tokens
        outputs += e.output_tokens
        reads += e.cache_read_tokens
        writes += e.cache_write_tokens
        cost += e.cost_usd
        denominator = inputs + reads + writes
        conn.execute(
            "UPDATE runs SET total_input_tokens = ?, total_output_tokens = ?,"
            " cache_read_tokens = ?, cache_write_tokens = ?, total_cost_usd = ?,"
            " cache_hit_rate = ?, credits_used = ?, usage_estimated = ? WHERE run_id = ?",
            (
                inputs,
                outputs,
                reads,
                writes,
                cost,
                None if denominator == 0 else reads / denominator,
                credits_for(cost, multiplier),
                estimated,
                run_id,
            ),
        )

    @staticmethod
    def _status(status: str) -> Handler:
        def apply(conn: SqlConnection, e: DomainEvent, r: RecordedEvent) -> None:
            conn.execute(
                "UPDATE runs SET status = ? WHERE run_id = ?",
                (status, run_id_of(r.stream)),
            )

        return apply

    @staticmethod
    def _ended(status: str) -> Handler:
        column = {"completed": "completed_at", "failed": "failed_at"}.get(status, "cancelled_at")

        def apply(conn: SqlConnection, e: DomainEvent, r: RecordedEvent) -> None:
            run_id = run_id_of(r.stream)
            row = conn.fetch_one("SELECT created_at FROM runs WHERE run_id = ?", (run_id,))
            assert row is not None, f"{r.type} before run.started in {r.stream}"
            error_class, message = (
                (e.error_class, e.message) if isinstance(e, RunFailed) else (None, None)
            )
            conn.execute(
                f"UPDATE runs SET status = ?, {column} = ?, duration_ms = ?, error_class = ?,"
                " error_message = ? WHERE run_id = ?",
                (
                    status,
                    r.created_at,
                    ms_between(row[0], r.created_at),
                    error_class,
                    message,
                    run_id,
                ),
            )

        return apply


def _new_run(e: RunStarted, created_at: str) -> list[Any]:
    """The row ``_started`` inserts (the columns it leaves out take their defaults)."""
    row = _RUN_DEFAULTS.copy()
    row[: _CREATED_AT + 1] = (
        e.run_id,
        e.org_id,
        e.thread_id,
        "running",
        e.route_id,
        e.model,
        e.persona_id,
        e.trace_id,
        e.created_by_user_id,
        created_at,
    )
    row[_MULTIPLIER] = e.credits_multiplier
    row[_RETRY_OF] = e.retry_of
    return row


#: A new run's row before ``_new_run`` fills in the event's values: the table's defaults.
_RUN_DEFAULTS: list[Any] = [
    {
        "total_input_tokens": 0,
        "total_output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "total_cost_usd": 0.0,
        "credits_used": 0,
        "usage_estimated": 0,
    }.get(column)
    for column in RUN_COLUMNS
]


_INSERT_CALL = "INSERT INTO run_call_usage VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


def _estimated_call(run_id: str, e: RunUsage) -> list[Any]:
    """A ``run_call_usage`` row: the call counted with its estimate (taken back if the
    reported usage follows)."""
    return [
        run_id,
        e.call,
        1,
        e.input_tokens,
        e.output_tokens,
        e.cache_read_tokens,
        e.cache_write_tokens,
        e.cost_usd,
    ]


def _reported_call(run_id: str, e: RunUsage) -> list[Any]:
    """A ``run_call_usage`` row: the call counted with its reported usage (nothing to take
    back, a later estimate is ignored)."""
    return [run_id, e.call, 0, 0, 0, 0, 0, 0]


def _count_usage(row: list[Any], calls: RowCache, run_id: str, e: RunUsage) -> None:
    """``RunsProjection._usage`` on a run's row and its calls in memory: the same operations
    on the same values, in the same order."""
    known = calls.get((run_id, e.call))
    inputs, outputs, reads, writes, cost = row[_INPUTS : _INPUTS + 5]
    multiplier = row[_MULTIPLIER]
    if e.estimated:
        if known is not None:
            return  # the call is counted already
        calls.put(_estimated_call(run_id, e))
    elif known is None:
        calls.put(_reported_call(run_id, e))
    elif known[2]:
        inputs -= known[3]
        outputs -= known[4]
        reads -= known[5]
        writes -= known[6]
        cost -= known[7]
        calls.put(_reported_call(run_id, e))
    inputs += e.input_tokens
    outputs += e.output_tokens
    reads += e.cache_read_tokens
    writes += e.cache_write_tokens
    cost += e.cost_usd
    estimated = 0
    for call in calls.under(run_id):
        if call[2] == 1:
            estimated = 1
            break
    denominator = inputs + reads + writes
    row[_INPUTS : _INPUTS + 6] = (
        inputs,
        outputs,
        reads,
        writes,
        cost,
        None if denominator == 0 else reads / denominator,
    )
    row[_CREDITS] = credits_for(cost, multiplier)
    row[_USAGE_ESTIMATED] = estimated
