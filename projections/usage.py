"""Usage per org, UTC day, model, user and route: the report behind ``GET /v1/usage``.

Tokens, cost and credits are counted on the day of the ``run.usage`` event that reports them
(what a provider bills that day), under the model that event names. A run is counted once, in
``runs``, on the day it started, under its own model. Credits are a run's figure
(``ceil(cost * 1000 * multiplier)`` of its whole cost), so each ``run.usage`` adds only the
credits by which it raised its run's figure: summed over any set of rows that holds all of a
run's usage, credits equal the run's own ``credits_used`` exactly.

Each model call is counted once, as in the run's own accounting (``runs.run.evolve``): an
estimated usage (a cut call) counts only if the call has no usage yet, and a provider-reported
usage replaces an estimate of the same call — the estimate is taken back, with the credits it
added, from the row it was added to.

``usage_live_runs`` keeps what a live run's next ``run.usage`` needs (its org, creator, route,
multiplier and cost so far) and ``usage_calls`` what each of its calls added; a run's rows there
are dropped when it ends (no usage follows a terminal event).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventstore import RecordedEvent, SqlConnection
from projections.base import Decoded, Handler, RowCache, TableProjection, chunk_runs
from runs.events import (
    RUN_STREAM_PREFIX,
    DomainEvent,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    RunUsage,
    run_id_of,
)
from runs.run import credits_for

__all__ = ["USAGE_GROUPS", "UsageProjection", "utc_day"]

#: ``group_by`` value → the column of ``usage`` it groups on.
USAGE_GROUPS = {"day": "day", "model": "model", "user": "user_id", "route": "route_id"}

_ADD = (
    "INSERT INTO usage (org_id, day, model, user_id, route_id, runs, input_tokens,"
    " output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, credits_used)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (org_id, day, model, user_id, route_id) DO UPDATE SET"
    " runs = usage.runs + excluded.runs,"
    " input_tokens = usage.input_tokens + excluded.input_tokens,"
    " output_tokens = usage.output_tokens + excluded.output_tokens,"
    " cache_read_tokens = usage.cache_read_tokens + excluded.cache_read_tokens,"
    " cache_write_tokens = usage.cache_write_tokens + excluded.cache_write_tokens,"
    " cost_usd = usage.cost_usd + excluded.cost_usd,"
    " credits_used = usage.credits_used + excluded.credits_used"
)


_NOTHING_USED = (0, 0, 0, 0, 0.0, 0)

_USAGE_COLUMNS = (
    "org_id",
    "day",
    "model",
    "user_id",
    "route_id",
    "runs",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "credits_used",
)
_LIVE_COLUMNS = ("run_id", "org_id", "user_id", "route_id", "credits_multiplier", "cost_usd")
_CALLS_COLUMNS = (
    "run_id",
    "call",
    "estimated",
    "day",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "credits_used",
)


def utc_day(created_at: str) -> str:
    """``YYYY-MM-DD`` of one of the store's timestamps (always UTC, RFC 3339)."""
    return created_at[:10]


class UsageProjection(TableProjection):
    name = "usage"
    rebuild_cost = 3
    tables: tuple[str, ...] = ("usage", "usage_live_runs", "usage_calls")
    ddl = """
    CREATE TABLE IF NOT EXISTS usage (
        org_id             TEXT NOT NULL,
        day                TEXT NOT NULL,
        model              TEXT NOT NULL,
        user_id            TEXT NOT NULL,
        route_id           TEXT NOT NULL,
        runs               INTEGER NOT NULL,
        input_tokens       INTEGER NOT NULL,
        output_tokens      INTEGER NOT NULL,
        cache_read_tokens  INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL,
        cost_usd           REAL NOT NULL,
        credits_used       INTEGER NOT NULL,
        PRIMARY KEY (org_id, day, model, user_id, route_id)
    );
    CREATE TABLE IF NOT EXISTS usage_live_runs (
        run_id             TEXT PRIMARY KEY,
        org_id             TEXT NOT NULL,
        user_id            TEXT NOT NULL,
        route_id           TEXT NOT NULL,
        credits_multiplier REAL NOT NULL,
        cost_usd           REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS usage_calls (
        run_id             TEXT NOT NULL,
        call               INTEGER NOT NULL,
        estimated          INTEGER NOT NULL,
        day                TEXT NOT NULL,
        model              TEXT NOT NULL,
        input_tokens       INTEGER NOT NULL,
        output_tokens      INTEGER NOT NULL,
        cache_read_tokens  INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL,
        cost_usd           REAL NOT NULL,
        credits_used       INTEGER NOT NULL,
        PRIMARY KEY (run_id, call)
    )
    """

    def handlers(self) -> dict[type[DomainEvent], Handler]:
        return {
            RunStarted: self._started,
            RunUsage: self._usage,
            RunCompleted: self._ended,
            RunFailed: self._ended,
            RunCancelled: self._ended,
        }

    def apply_many(self, conn: SqlConnection, events: Sequence[Decoded]) -> None:
        """The handlers below, on the chunk's rows in memory (``TableProjection``)."""
        types = self.event_types
        events = [pair for pair in events if pair[0].type in types]
        usage = RowCache("usage", _USAGE_COLUMNS, key_size=5)
        live = RowCache("usage_live_runs", _LIVE_COLUMNS)
        calls = RowCache("usage_calls", _CALLS_COLUMNS, key_size=2)
        ids, started = chunk_runs(events)
        prefix = RUN_STREAM_PREFIX
        live.absent(started)
        calls.absent(started)
        live.load(conn, ids)
        calls.load(conn, ids)
        usage_rows, live_get, calls_get = usage.rows, live.rows.get, calls.rows.get

        def add(key: tuple[str, str, str, str, str], figures: Sequence[Any]) -> None:
            # INSERT ... ON CONFLICT DO UPDATE SET column = usage.column + excluded.column
            row = usage_rows.get(key)
            if row is None:
                if key not in usage_rows:
                    usage.load_key(conn, key)
                    row = usage_rows[key]
                if row is None:
                    usage.put([*key, *figures])
                    return
            for index, value in enumerate(figures, start=5):
                row[index] = row[index] + value

        for r, e in events:
            if isinstance(e, RunStarted):
                if live_get(e.run_id) is not None:
                    raise ValueError(f"run {e.run_id} started twice")
                live.put(
                    [
                        e.run_id,
                        e.org_id,
                        e.created_by_user_id,
                        e.route_id,
                        e.credits_multiplier,
                        0.0,
                    ]
                )
                day = utc_day(r.created_at)
                add((e.org_id, day, e.model, e.created_by_user_id, e.route_id), (1, *_NOTHING_USED))
                continue
            run_id = r.stream.removeprefix(prefix)
            if not isinstance(e, RunUsage):  # the run ended
                live.drop(run_id)
                for call in calls.under(run_id):
                    calls.drop((run_id, call[1]))
                continue
            row = live_get(run_id)
            assert row is not None  # run.started comes first; no usage follows a terminal event
            _, org_id, user_id, route_id, multiplier, before = row
            known = calls_get((run_id, e.call))
            if e.estimated and known is not None:
                continue  # the call is counted already
            cost, taken_back = before, 0
            if known is not None and known[2]:
                day, model, inputs, outputs, reads, writes, estimate, taken_back = known[3:]
                add(
                    (org_id, day, model, user_id, route_id),
                    (0, -inputs, -outputs, -reads, -writes, -estimate, -taken_back),
                )
                cost -= estimate
            after = cost + e.cost_usd
            credits = credits_for(after, multiplier) - credits_for(before, multiplier) + taken_back
            figures = (e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens)
            day = utc_day(r.created_at)
            row[5] = after
            add((org_id, day, e.model, user_id, route_id), (0, *figures, e.cost_usd, credits))
            kept = (1, day, e.model, *figures, e.cost_usd, credits) if e.estimated else None
            calls.put([run_id, e.call, *(kept or (0, day, e.model, 0, 0, 0, 0, 0.0, 0))])
        usage.flush(conn)
        live.flush(conn)
        calls.flush(conn)

    @staticmethod
    def _started(conn: SqlConnection, e: RunStarted, r: RecordedEvent) -> None:
        conn.execute(
            "INSERT INTO usage_live_runs (run_id, org_id, user_id, route_id, credits_multiplier,"
            " cost_usd) VALUES (?, ?, ?, ?, ?, 0)",
            (e.run_id, e.org_id, e.created_by_user_id, e.route_id, e.credits_multiplier),
        )
        conn.execute(
            _ADD,
            (
                *(e.org_id, utc_day(r.created_at), e.model, e.created_by_user_id, e.route_id, 1),
                *_NOTHING_USED,
            ),
        )

    @staticmethod
    def _usage(conn: SqlConnection, e: RunUsage, r: RecordedEvent) -> None:
        run_id = run_id_of(r.stream)
        # The live run and what is counted for this call (NULLs: nothing yet), at once.
        live = conn.fetch_one(
            "SELECT l.org_id, l.user_id, l.route_id, l.credits_multiplier, l.cost_usd,"
            " c.estimated, c.day, c.model, c.input_tokens, c.output_tokens,"
            " c.cache_read_tokens, c.cache_write_tokens, c.cost_usd, c.credits_used"
            " FROM usage_live_runs l LEFT JOIN usage_calls c"
            " ON c.run_id = l.run_id AND c.call = ? WHERE l.run_id = ?",
            (e.call, run_id),
        )
        assert live is not None  # run.started comes first; no usage follows a terminal event
        org_id, user_id, route_id, multiplier, before = live[:5]
        known = None if live[5] is None else live[5:]
        if e.estimated and known is not None:
            return  # the call is counted already
        # The same float operations, in the same order, as the run's own total, so the
        # credits added here sum to the run's credits exactly.
        cost, taken_back = before, 0
        if known is not None and known[0]:
            _, day, model, inputs, outputs, reads, writes, estimate, taken_back = known
            conn.execute(
                _ADD,
                (
                    *(org_id, day, model, user_id, route_id, 0),
                    *(-inputs, -outputs, -reads, -writes, -estimate, -taken_back),
                ),
            )
            cost -= estimate
        after = cost + e.cost_usd
        credits = credits_for(after, multiplier) - credits_for(before, multiplier) + taken_back
        figures = (e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens)
        day = utc_day(r.created_at)
        conn.execute("UPDATE usage_live_runs SET cost_usd = ? WHERE run_id = ?", (after, run_id))
        conn.execute(
            _ADD,
            (org_id, day, e.model, user_id, route_id, 0, *figures, e.cost_usd, credits),
        )
        # What an estimate added, to take back if the provider's own usage follows; a reported
        # usage only marks the call as counted.
        kept = (1, day, e.model, *figures, e.cost_usd, credits) if e.estimated else None
        conn.execute(
            "INSERT INTO usage_calls (run_id, call, estimated, day, model, input_tokens,"
            " output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, credits_used)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, call) DO UPDATE SET"
            " estimated = excluded.estimated, day = excluded.day, model = excluded.model,"
            " input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,"
            " cache_read_tokens = excluded.cache_read_tokens,"
            " cache_write_tokens = excluded.cache_write_tokens, cost_usd = excluded.cost_usd,"
            " credits_used = excluded.credits_used",
            (run_id, e.call, *(kept or (0, day, e.model, 0, 0, 0, 0, 0.0, 0))),
        )

    @staticmethod
    def _ended(conn: SqlConnection, e: DomainEvent, r: RecordedEvent) -> None:
        run_id = run_id_of(r.stream)
        conn.execute("DELETE FROM usage_live_runs WHERE run_id = ?", (run_id,))
        conn.execute("DELETE FROM usage_calls WHERE run_id = ?", (run_id,))
