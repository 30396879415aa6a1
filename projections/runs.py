"""The runs read model with accounting (stream ``run-<id>``).

Written with plain SQL per event type; a test checks it against the pure fold in
``runs.run`` for random command sequences, so the two implementations keep each other honest.
"""

from __future__ import annotations

from eventstore import RecordedEvent, SqlConnection
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
from runs.run import credits_for, ms_between

__all__ = ["RUN_COLUMNS", "RunsProjection"]

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
)


class RunsProjection(TableProjection):
    name = "runs"
    tables: tuple[str, ...] = ("runs",)
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
        error_message       TEXT
    );
    CREATE INDEX IF NOT EXISTS runs_by_org ON runs (org_id, run_id);
    CREATE INDEX IF NOT EXISTS runs_by_org_status ON runs (org_id, status, run_id);
    CREATE INDEX IF NOT EXISTS runs_by_thread ON runs (thread_id, run_id)
    """

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
            " trace_id, created_by_user_id, created_at, credits_multiplier)"
            " VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
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
            ),
        )

    @staticmethod
    def _usage(conn: SqlConnection, e: RunUsage, r: RecordedEvent) -> None:
        run_id = run_id_of(r.stream)
        row = conn.fetch_one(
            "SELECT total_input_tokens, cache_read_tokens, cache_write_tokens, total_cost_usd,"
            " credits_multiplier FROM runs WHERE run_id = ?",
            (run_id,),
        )
        assert row is not None, f"run.usage before run.started in {r.stream}"
        inputs = row[0] + e.input_tokens
        reads = row[1] + e.cache_read_tokens
        writes = row[2] + e.cache_write_tokens
        cost = row[3] + e.cost_usd
        denominator = inputs + reads + writes
        conn.execute(
            "UPDATE runs SET total_input_tokens = ?,"
            " total_output_tokens = total_output_tokens + ?, cache_read_tokens = ?,"
            " cache_write_tokens = ?, total_cost_usd = ?, cache_hit_rate = ?, credits_used = ?"
            " WHERE run_id = ?",
            (
                inputs,
                e.output_tokens,
                reads,
                writes,
                cost,
                None if denominator == 0 else reads / denominator,
                credits_for(cost, row[4]),
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
