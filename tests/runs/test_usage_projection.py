"""The usage read model, property-tested: for random runs of several orgs, users, routes and
models spread over several UTC days, every report equals a sum computed here from the
generated runs, its totals equal the runs' own figures (the runs read model), and no other
org's usage appears."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import Database, RecordedEvent, connect_database
from projections import RunsProjection, UsageProjection
from projections.queries import Queries
from runs.events import (
    DomainEvent,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    RunUsage,
    encode_event,
    run_stream,
)
from runs.run import credits_for, fold_recorded
from tests.postgres import fresh_schema

FIRST_DAY = dt.date(2026, 2, 27)  # the runs cross a month's end
ORGS = ("org-a", "org-b")
USERS = ("user-1", "user-2")
ROUTES = {"route-x": 1.0, "route-y": 2.5}
MODELS = ("model-m", "model-n")
GROUPS = ("day", "model", "user", "route")


@dataclass
class Call:
    number: int  # the model call it reports (repeats: an estimate, then the reported usage)
    estimated: bool
    day: int
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float


@dataclass
class GeneratedRun:
    run_id: str
    org: str
    user: str
    route: str
    model: str
    day: int
    calls: list[Call] = field(default_factory=list)
    end: str | None = None


def day_of(offset: int) -> str:
    return (FIRST_DAY + dt.timedelta(days=offset)).isoformat()


def stamp(offset: int, ms: int) -> str:
    moment = dt.datetime.combine(FIRST_DAY, dt.time(), tzinfo=dt.UTC) + dt.timedelta(
        days=offset, milliseconds=ms
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


costs = st.one_of(
    st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.0007, 1e-6]),
    st.floats(min_value=0, max_value=5, allow_nan=False, allow_infinity=False),
)
calls = st.builds(
    Call,
    number=st.integers(1, 3),
    estimated=st.booleans(),
    day=st.integers(0, 1),  # days after the previous event
    model=st.sampled_from(MODELS),
    input_tokens=st.integers(0, 10_000),
    output_tokens=st.integers(0, 5_000),
    cache_read_tokens=st.integers(0, 3_000),
    cache_write_tokens=st.integers(0, 3_000),
    cost_usd=costs,
)


@st.composite
def generated_runs(draw: st.DrawFn) -> list[GeneratedRun]:
    runs = []
    for number in range(draw(st.integers(1, 8))):
        run = GeneratedRun(
            run_id=f"run-{number:03d}",
            org=draw(st.sampled_from(ORGS)),
            user=draw(st.sampled_from(USERS)),
            route=draw(st.sampled_from(sorted(ROUTES))),
            model=draw(st.sampled_from(MODELS)),
            day=draw(st.integers(0, 4)),
            calls=draw(st.lists(calls, max_size=5)),
            end=draw(st.sampled_from([None, "completed", "failed", "cancelled"])),
        )
        runs.append(run)
    return runs


def log_of(runs: Sequence[GeneratedRun]) -> list[RecordedEvent]:
    """The runs' events, interleaved in time order as a log would hold them."""
    timed: list[tuple[str, str, DomainEvent]] = []
    for index, run in enumerate(runs):
        day = run.day
        timed.append(
            (
                stamp(day, index),
                run.run_id,
                RunStarted(
                    run_id=run.run_id,
                    thread_id=f"thread-{index}",
                    org_id=run.org,
                    created_by_user_id=run.user,
                    trace_id="t",
                    route_id=run.route,
                    provider="scripted",
                    model=run.model,
                    credits_multiplier=ROUTES[run.route],
                ),
            )
        )
        for number, call in enumerate(run.calls, start=1):
            day += call.day
            usage = RunUsage(
                model=call.model,
                input_tokens=call.input_tokens,
                output_tokens=call.output_tokens,
                cache_read_tokens=call.cache_read_tokens,
                cache_write_tokens=call.cache_write_tokens,
                cost_usd=call.cost_usd,
                call=call.number,
                estimated=call.estimated,
            )
            timed.append((stamp(day, 1000 * number + index), run.run_id, usage))
        ends = {"completed": RunCompleted(), "failed": RunFailed(error_class="x", message="m")}
        if run.end is not None:
            end = ends.get(run.end, RunCancelled())
            timed.append((stamp(day, 100_000 + index), run.run_id, end))
    timed.sort(key=lambda item: item[0])
    seqs: dict[str, int] = {}
    log = []
    for position, (at, run_id, event) in enumerate(timed, start=1):
        seqs[run_id] = seqs.get(run_id, 0) + 1
        new = encode_event(event)
        stream = run_stream(run_id)
        log.append(
            RecordedEvent(position, stream, seqs[run_id], new.type, new.data.decode(), at, "0" * 64)
        )
    return log


Figures = dict[str, float]
NAMES = (
    "runs",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "credits_used",
)


def expected_cells(runs: Sequence[GeneratedRun]) -> dict[tuple[str, ...], Figures]:
    """Usage by (org, day, model, user, route) computed from the generated runs, not through
    SQL: a run counts once on its start day; each model call counts once (an estimate only
    for a call with no usage yet, taken back when the call's reported usage comes)."""
    cells: dict[tuple[str, ...], Figures] = {}

    def add(day: str, model: str, run: GeneratedRun, sign: int, **figures: float) -> None:
        cell = cells.setdefault((run.org, day, model, run.user, run.route), dict.fromkeys(NAMES, 0))
        for name, number in figures.items():
            cell[name] += sign * number

    for run in runs:
        add(day_of(run.day), run.model, run, 1, runs=1)
        multiplier = ROUTES[run.route]
        day, spent = run.day, 0.0
        counted: dict[int, tuple[str, str, Figures] | None] = {}  # call -> estimate, or None
        for call in run.calls:
            day += call.day
            if call.estimated and call.number in counted:
                continue
            before, taken_back = spent, 0
            estimate = counted.get(call.number)
            if estimate is not None:
                estimate_day, estimate_model, figures = estimate
                add(estimate_day, estimate_model, run, -1, **figures)
                spent -= figures["cost_usd"]
                taken_back = int(figures["credits_used"])
            spent += call.cost_usd
            figures = {
                "input_tokens": call.input_tokens,
                "output_tokens": call.output_tokens,
                "cache_read_tokens": call.cache_read_tokens,
                "cache_write_tokens": call.cache_write_tokens,
                "cost_usd": call.cost_usd,
                "credits_used": credits_for(spent, multiplier)
                - credits_for(before, multiplier)
                + taken_back,
            }
            add(day_of(day), call.model, run, 1, **figures)
            counted[call.number] = (day_of(day), call.model, figures) if call.estimated else None
    return cells


def expected_report(
    cells: dict[tuple[str, ...], Figures], org: str, group_by: str, first: str, last: str
) -> dict[str, Figures]:
    position = {"day": 1, "model": 2, "user": 3, "route": 4}[group_by]
    rows: dict[str, Figures] = {}
    for key, figures in cells.items():
        if key[0] == org and first <= key[1] <= last:
            row = rows.setdefault(key[position], dict.fromkeys(NAMES, 0))
            for name in NAMES:
                row[name] += figures[name]
    return rows


class _Reader:
    """What ``Queries`` needs of a store, over one connection of the SQL port."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.db.fetch_all(sql, params)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def scratch_location(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A database of each backend; every example works in a transaction it rolls back."""
    if request.param == "sqlite":
        return str(tmp_path_factory.mktemp("usage") / "usage.db")
    return fresh_schema(request.getfixturevalue("pg_url"))


def assert_rows_equal(got: list[dict[str, Any]], expected: dict[str, dict[str, float]]) -> None:
    assert [r["key"] for r in got] == sorted(expected)
    for r in got:
        want = expected[r["key"]]
        for name, number in want.items():
            if name == "cost_usd":
                assert math.isclose(r[name], number, rel_tol=1e-9, abs_tol=1e-9), (name, r, want)
            else:
                assert r[name] == number, (name, r, want)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_runs(), st.integers(0, 9), st.integers(0, 9))
def test_usage_reports_equal_the_runs_figures(
    scratch_location: str, runs: list[GeneratedRun], start: int, length: int
) -> None:
    conn = connect_database(scratch_location)
    try:
        conn.begin_schema()
        projections = [RunsProjection(), UsageProjection()]
        for projection in projections:
            projection.create(conn)
        log = log_of(runs)
        by_run: dict[str, list[RecordedEvent]] = {}
        for event in log:
            by_run.setdefault(event.stream, []).append(event)
        for event in log:
            for projection in projections:
                projection.apply(conn, event)
        queries = Queries(_Reader(conn))  # type: ignore[arg-type]
        cells = expected_cells(runs)
        everything = (day_of(-1), day_of(30))
        some_days = (day_of(start), day_of(start + length))
        for org in ORGS:
            own = conn.fetch_one(
                "SELECT count(*), coalesce(sum(total_input_tokens), 0),"
                " coalesce(sum(total_output_tokens), 0), coalesce(sum(cache_read_tokens), 0),"
                " coalesce(sum(cache_write_tokens), 0), coalesce(sum(total_cost_usd), 0),"
                " coalesce(sum(credits_used), 0) FROM runs WHERE org_id = ?",
                (org,),
            )
            assert own is not None
            for group_by in GROUPS:
                for first, last in (everything, some_days):
                    got = asyncio.run(queries.usage(org, first, last, group_by))
                    assert_rows_equal(got, expected_report(cells, org, group_by, first, last))
                # Over all days, the totals are the runs' own figures.
                got = asyncio.run(queries.usage(org, *everything, group_by))
                sums = [sum(r[k] for r in got) for k in list(got[0])[1:]] if got else [0] * 7
                assert sums[:5] == list(own[:5])
                assert math.isclose(sums[5], own[5], rel_tol=1e-9, abs_tol=1e-9)
                assert sums[6] == own[6]
                # ... and of the pure fold of each run's events.
                folded = [fold_recorded(events) for events in by_run.values()]
                states = [state for state in folded if state is not None and state.org_id == org]
                assert sums[1] == sum(state.total_input_tokens for state in states)
                assert sums[2] == sum(state.total_output_tokens for state in states)
                assert sums[6] == sum(state.credits_used for state in states)
    finally:
        conn.rollback()
        conn.close()
