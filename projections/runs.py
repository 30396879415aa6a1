"""The runs read model with accounting (stream ``run-<id>``).

Written with plain SQL per event type; a test checks it against the pure fold in
``runs.run`` for random command sequences, so the two implementations keep each other honest.
"""

from __future__ import annotations

from eventstore import Cap, RecordedEvent, SqlConnection
from projections.base import Handler, TableProjection
from runs.events import (
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


class RunsProjection(TableProjection):
    name = "runs"
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
    -- The running runs, whatever their org: start-up and the takeover loop look for drivers.
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
        known = conn.fetch_one(
            "SELECT estimated, input_tokens, output_tokens, cache_read_tokens,"
            " cache_write_tokens, cost_usd FROM run_call_usage WHERE run_id = ? AND call = ?",
            (run_id, e.call),
        )
        row = conn.fetch_one(
            "SELECT total_input_tokens, total_output_tokens, cache_read_tokens,"
            " cache_write_tokens, total_cost_usd, credits_multiplier FROM runs WHERE run_id = ?",
            (run_id,),
        )
        assert row is not None, f"run.usage before run.started in {r.stream}"
        inputs, outputs, reads, writes, cost, multiplier = row
        if e.estimated:
            if known is not None:
                return  # the call is counted already
            conn.execute(
                "INSERT INTO run_call_usage VALUES (?, ?, 1, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    e.call,
                    e.input_tokens,
                    e.output_tokens,
                    e.cache_read_tokens,
                    e.cache_write_tokens,
                    e.cost_usd,
                ),
            )
        elif known is None:
            conn.execute(
                "INSERT INTO run_call_usage VALUES (?, ?, 0, 0, 0, 0, 0, 0)", (run_id, e.call)
            )
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
        inputs += e.input_tokens
        outputs += e.output_tokens
        reads += e.cache_read_tokens
        writes += e.cache_write_tokens
        cost += e.cost_usd
        # EXISTS is an integer on SQLite and a boolean on PostgreSQL: stored as 0 or 1.
        still_estimated = conn.fetch_one(
            "SELECT EXISTS (SELECT 1 FROM run_call_usage WHERE run_id = ? AND estimated = 1)",
            (run_id,),
        )
        estimated = int(bool(still_estimated and still_estimated[0]))
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
