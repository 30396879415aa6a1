"""The run aggregate as a pure fold, checked with hypothesis.

Random command sequences are turned into the events the executor and the ``decide`` functions
produce. They must fold without error, terminal states must stay terminal, every event must
round-trip through encode/decode, and the SQL runs projection must agree with the fold.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import RecordedEvent, connect_database
from projections import RUN_COLUMNS, RunsProjection, ThreadsProjection
from runs.errors import InvalidTransition, ValidationFailed
from runs.events import (
    EVENT_TYPES,
    DomainEvent,
    MessageDelta,
    RunCancelled,
    RunCancelRequested,
    RunCompleted,
    RunFailed,
    RunInputProvided,
    RunResumed,
    RunRetried,
    RunStarted,
    RunUsage,
    RunWaitingForInput,
    ToolCalled,
    ToolCallOutcomes,
    ToolResult,
    decode_event,
    encode_event,
)
from runs.run import (
    RunState,
    cancel_receipt,
    credits_for,
    decide_cancel,
    decide_input,
    evolve,
    fold_recorded,
    ms_between,
)
from tests.postgres import fresh_schema

RUN_ID = "01a222e0-5694-70d2-9042-2dade0db901d"
STREAM = f"run-{RUN_ID}"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
TERMINAL_TYPES = {RunCompleted.TYPE, RunFailed.TYPE, RunCancelled.TYPE}


def stamp(ms: int) -> str:
    at = T0 + timedelta(milliseconds=ms)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


# -- strategies -------------------------------------------------------------------------------

tokens = st.integers(min_value=0, max_value=2_000_000)
costs = st.floats(min_value=0, max_value=50, allow_nan=False, allow_infinity=False)
short_text = st.text(max_size=20)

working = st.one_of(
    # The last flags: an estimated usage (a cut call), and one for the previous call again
    # (a reported usage arriving after an estimate, or an estimate after a reported one).
    st.tuples(
        st.just("usage"), tokens, tokens, tokens, tokens, costs, st.booleans(), st.booleans()
    ),
    st.tuples(st.just("pending_tool"), st.booleans()),
    st.tuples(st.just("delta"), short_text),
    st.tuples(st.just("tool"), st.sampled_from(["calculator", "current_time"]), st.booleans()),
    st.tuples(st.just("retry")),
    st.tuples(st.just("resume")),
    st.tuples(st.just("ask"), st.sampled_from(["question", "confirmation"]), short_text),
    st.tuples(st.just("input"), st.sampled_from(["approve", "deny", "Approve ", "blue"])),
)
endings = st.one_of(
    st.tuples(st.just("cancel")),
    st.tuples(st.just("complete")),
    st.tuples(st.just("fail"), st.sampled_from(["provider.error", "budget.max_iterations"])),
)
commands = st.one_of(working, endings)

started = st.builds(
    RunStarted,
    run_id=st.just(RUN_ID),
    thread_id=st.just("01a222e0-5694-70d2-9042-2dade0db9000"),
    org_id=st.just("01a222e0-5694-70d2-9042-2dade0db9001"),
    created_by_user_id=st.just("01a222e0-5694-70d2-9042-2dade0db9002"),
    trace_id=st.text(alphabet="0123456789abcdef", min_size=8, max_size=32),
    route_id=st.sampled_from(["scripted", "anthropic", "priced"]),
    provider=st.sampled_from(["scripted", "anthropic"]),
    model=st.sampled_from(["scripted-1", "claude-sonnet-4-5"]),
    persona_id=st.sampled_from([None, "default@1", "helper@3"]),
    credits_multiplier=st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.7]),
    retry_of=st.sampled_from([None, "01a222e0-5694-70d2-9042-2dade0db9003"]),
)


class Script:
    """The events a run's writers would append for ``commands``: the executor while the run
    works, ``decide_input`` and ``decide_cancel`` from the HTTP side."""

    def __init__(self, first: RunStarted) -> None:
        self.events: list[DomainEvent] = [first]
        self.state: RunState = evolve(None, first, 1, stamp(0))
        self.calls = 0
        self.tool_calls = 0
        self.requests = 0
        self.running: list[str] = []  # a tool call whose tool runs now (cut by a cancel)

    def append(self, *events: DomainEvent, at: str) -> None:
        for event in events:
            self.state = evolve(self.state, event, self.state.seq + 1, at)
            self.events.append(event)

    def run(self, command: tuple[Any, ...], at: str) -> None:
        state = self.state
        kind = command[0]
        if kind == "cancel":
            decided = decide_cancel(state, "user-1", self.running)
            if state.terminal:
                assert decided == []
            self.append(*decided, at=at)
            return
        if state.terminal:
            return  # nothing else writes to a terminal run
        waiting = state.status == "waiting_for_input"
        if kind == "input":
            if not waiting:
                with pytest.raises(InvalidTransition):
                    decide_input(state, command[1], "user-1")
                return
            assert state.waiting is not None
            if state.waiting.kind == "confirmation" and command[1].strip().lower() not in {
                "approve",
                "deny",
            }:
                with pytest.raises(ValidationFailed):
                    decide_input(state, command[1], "user-1")
                return
            self.append(*decide_input(state, command[1], "user-1"), at=at)
        elif kind == "fail":
            self.append(RunFailed(error_class=command[1], message=f"{command[1]} happened"), at=at)
        elif kind == "resume":
            self.append(RunResumed(from_seq=state.seq), at=at)
        elif waiting:
            return  # the executor has no task while the run waits
        elif kind == "usage":
            _, inputs, outputs, reads, writes, cost, estimated, again = command
            if not (again and self.calls):
                self.calls += 1
            usage = RunUsage(
                model=state.model,
                input_tokens=inputs,
                output_tokens=outputs,
                cache_read_tokens=reads,
                cache_write_tokens=writes,
                cost_usd=cost,
                call=self.calls,
                estimated=estimated,
            )
            self.append(usage, at=at)
        elif kind == "pending_tool":
            # A tool call without its result yet; with the flag, its tool is running.
            self.tool_calls += 1
            call_id = f"call_{self.tool_calls}"
            self.append(ToolCalled(tool_call_id=call_id, name="calculator"), at=at)
            self.running = [call_id] if command[1] else []
        elif kind == "delta":
            self.append(MessageDelta(content=command[1], call=self.calls + 1), at=at)
        elif kind == "tool":
            self.tool_calls += 1
            call_id = f"call_{self.tool_calls}"
            self.append(
                ToolCalled(tool_call_id=call_id, name=command[1], arguments={"x": 1}),
                ToolResult(tool_call_id=call_id, name=command[1], output="42", is_error=command[2]),
                at=at,
            )
            self.running = []
        elif kind == "retry":
            self.calls += 1
            self.append(
                RunRetried(call=self.calls + 1, discarded_call=self.calls, attempt=2, reason="529"),
                at=at,
            )
        elif kind == "ask":
            self.requests += 1
            self.append(
                RunWaitingForInput(request_id=f"req_{self.requests}", kind=command[1], prompt="?"),
                at=at,
            )
        elif kind == "complete":
            self.append(RunCompleted(message_id="m1"), at=at)


@st.composite
def scripted_runs(draw: st.DrawFn) -> tuple[list[tuple[DomainEvent, int, str]], Script]:
    """A run's ``(event, seq, created_at)`` triples and the script that made them."""
    script = Script(draw(started))
    clock = 0
    stamps = [stamp(0)]
    body = draw(st.lists(working, max_size=30))
    ending = draw(st.lists(endings, max_size=1))
    # Commands after the end: nothing may be appended any more (cancel decides nothing).
    trailing = draw(st.lists(commands, max_size=3))
    for command in [*body, *ending, *trailing]:
        clock += draw(st.integers(min_value=0, max_value=5_000))
        before = len(script.events)
        script.run(command, stamp(clock))
        stamps += [stamp(clock)] * (len(script.events) - before)
    triples = [(e, i + 1, at) for i, (e, at) in enumerate(zip(script.events, stamps, strict=True))]
    return triples, script


def fold(events: list[tuple[DomainEvent, int, str]]) -> RunState | None:
    """Fold ``(event, seq, created_at)`` triples from the start of a run."""
    state: RunState | None = None
    for event, seq, at in events:
        state = evolve(state, event, seq, at)
    return state


def recorded(triples: list[tuple[DomainEvent, int, str]]) -> list[RecordedEvent]:
    out = []
    for position, (event, seq, at) in enumerate(triples, start=1):
        new = encode_event(event)
        out.append(RecordedEvent(position, STREAM, seq, new.type, new.data.decode(), at, "0" * 64))
    return out


# -- properties -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(scripted_runs())
def test_valid_sequences_fold_and_account(run: tuple[list[Any], Script]) -> None:
    triples, script = run
    state = fold(triples)
    assert state is not None
    # The typed events and the same events as the log holds them (encoded, then decoded)
    # fold to the same state.
    assert fold_recorded(recorded(triples)) == state
    events = [e for e, _, _ in triples]
    types = [e.TYPE for e in events]
    # The status, computed a second way: from the event types alone.
    expected_status = "running"
    for kind in types:
        expected_status = {
            RunWaitingForInput.TYPE: "waiting_for_input",
            RunInputProvided.TYPE: "running",
            RunCompleted.TYPE: "completed",
            RunFailed.TYPE: "failed",
            RunCancelled.TYPE: "cancelled",
        }.get(kind, expected_status)
    assert state.status == expected_status
    assert types[0] == RunStarted.TYPE
    assert state.seq == len(events)
    ends = [i for i, t in enumerate(types) if t in TERMINAL_TYPES]
    assert len(ends) <= 1
    assert ends in ([], [len(events) - 1])
    assert state.terminal == bool(ends)

    usage = counted_usage([e for e in events if isinstance(e, RunUsage)])
    assert state.total_input_tokens == sum(u.input_tokens for u in usage)
    assert state.total_output_tokens == sum(u.output_tokens for u in usage)
    assert state.cache_read_tokens == sum(u.cache_read_tokens for u in usage)
    assert state.cache_write_tokens == sum(u.cache_write_tokens for u in usage)
    assert state.total_cost_usd == pytest.approx(sum(u.cost_usd for u in usage), abs=1e-9)
    assert state.usage_estimated == any(u.estimated for u in usage)
    assert state.credits_used == credits_for(state.total_cost_usd, state.credits_multiplier)
    denominator = state.total_input_tokens + state.cache_read_tokens + state.cache_write_tokens
    if denominator == 0:
        assert state.cache_hit_rate is None
    else:
        assert state.cache_hit_rate == state.cache_read_tokens / denominator
        assert 0 <= state.cache_hit_rate <= 1

    last = events[-1]
    expected_status = {
        RunCompleted.TYPE: "completed",
        RunFailed.TYPE: "failed",
        RunCancelled.TYPE: "cancelled",
    }.get(last.TYPE)
    if expected_status is None:
        waits = [i for i, t in enumerate(types) if t == RunWaitingForInput.TYPE]
        answers = [i for i, t in enumerate(types) if t == RunInputProvided.TYPE]
        expected_status = "waiting_for_input" if len(waits) > len(answers) else "running"
        assert state.duration_ms is None
    else:
        ended_at = triples[-1][2]
        assert state.duration_ms == ms_between(triples[0][2], ended_at)
        assert state.duration_ms >= 0
    assert state.status == expected_status
    assert state.completed_at == (triples[-1][2] if expected_status == "completed" else None)
    assert state.failed_at == (triples[-1][2] if expected_status == "failed" else None)
    assert state.cancelled_at == (triples[-1][2] if expected_status == "cancelled" else None)
    if expected_status == "cancelled":
        assert types[-2:] == [RunCancelRequested.TYPE, RunCancelled.TYPE]
        # The receipt: every tool call once, by what became of it.
        receipt = events[-1]
        assert isinstance(receipt, RunCancelled) and receipt.tool_calls is not None
        called = [e.tool_call_id for e in events if isinstance(e, ToolCalled)]
        answered = {e.tool_call_id for e in events if isinstance(e, ToolResult)}
        assert receipt.tool_calls.completed == [c for c in called if c in answered]
        unanswered = [c for c in called if c not in answered]
        assert receipt.tool_calls.interrupted == [c for c in unanswered if c in script.running]
        assert receipt.tool_calls.not_started == [c for c in unanswered if c not in script.running]
        assert cancel_receipt(state) == receipt.tool_calls


def counted_usage(usages: list[RunUsage]) -> list[RunUsage]:
    """What a run's totals count: per model call its reported usages, or else its first
    estimate (a second computation, not the fold's)."""
    counted: list[RunUsage] = []
    for call in dict.fromkeys(u.call for u in usages):
        of_call = [u for u in usages if u.call == call]
        reported = [u for u in of_call if not u.estimated]
        counted += reported or of_call[:1]
    return counted


def any_run_event() -> st.SearchStrategy[DomainEvent]:
    """Any event that could be appended to a run's stream."""
    return st.sampled_from(
        [
            MessageDelta(content="late"),
            ToolCalled(tool_call_id="c", name="calculator"),
            ToolResult(tool_call_id="c", name="calculator", output="1"),
            RunUsage(model="m", input_tokens=1),
            RunRetried(call=2, discarded_call=1, attempt=2, reason="x"),
            RunResumed(from_seq=1),
            RunWaitingForInput(request_id="r", kind="question", prompt="?"),
            RunInputProvided(request_id="r", content="a"),
            RunCancelRequested(),
            RunCancelled(),
            RunCompleted(),
            RunFailed(error_class="x", message="y"),
        ]
    )


@settings(max_examples=150, deadline=None)
@given(scripted_runs(), st.sampled_from(["complete", "fail", "cancel"]), any_run_event())
def test_terminal_states_stay_terminal(
    run: tuple[list[Any], Script], ending: str, late: DomainEvent
) -> None:
    _, script = run
    if not script.state.terminal:
        script.run((ending, "provider.error") if ending == "fail" else (ending,), stamp(10**9))
    if not script.state.terminal:  # a waiting run cannot complete; it is cancelled instead
        assert ending == "complete"
        assert script.state.status == "waiting_for_input"
        script.run(("cancel",), stamp(10**9))
    state = script.state
    assert state.terminal
    with pytest.raises(InvalidTransition):
        evolve(state, late, state.seq + 1, stamp(10**9 + 1))
    # Commands on a terminal run decide nothing, or refuse.
    assert decide_cancel(state, "user-1") == []
    with pytest.raises(InvalidTransition):
        decide_input(state, "approve", "user-1")


def test_a_run_must_start_with_run_started() -> None:
    with pytest.raises(InvalidTransition):
        evolve(None, MessageDelta(content="x"), 1, stamp(0))


# Any value of any field of any event type, from the structs' own type information.
_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


def _for_type(info: Any) -> st.SearchStrategy[Any]:
    t = msgspec.inspect
    if isinstance(info, t.StrType):
        return st.text()
    if isinstance(info, t.IntType):
        return st.integers(min_value=-(2**63), max_value=2**63 - 1)
    if isinstance(info, t.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(info, t.BoolType):
        return st.booleans()
    if isinstance(info, t.NoneType):
        return st.none()
    if isinstance(info, t.DictType):
        return st.dictionaries(st.text(), _json, max_size=4)
    if isinstance(info, t.UnionType):
        return st.one_of(*(_for_type(member) for member in info.types))
    if isinstance(info, t.ListType):
        return st.lists(_for_type(info.item_type), max_size=4)
    if isinstance(info, t.StructType):
        return st.fixed_dictionaries({f.name: _for_type(f.type) for f in info.fields}).map(
            lambda kwargs: info.cls(**kwargs)
        )
    raise AssertionError(f"no strategy for {info}")


def _event_strategy(cls: type[DomainEvent]) -> st.SearchStrategy[DomainEvent]:
    fields = msgspec.inspect.type_info(cls).fields  # type: ignore[attr-defined]
    return st.fixed_dictionaries({f.name: _for_type(f.type) for f in fields}).map(
        lambda kwargs: cls(**kwargs)
    )


any_event = st.one_of(*(_event_strategy(cls) for cls in EVENT_TYPES.values()))


@settings(max_examples=400, deadline=None)
@given(any_event)
def test_every_event_round_trips(event: DomainEvent) -> None:
    new = encode_event(event)
    assert new.type == event.TYPE
    record = RecordedEvent(1, "s-1", 1, new.type, new.data.decode(), stamp(0), "0" * 64)
    assert decode_event(record) == event


@settings(max_examples=100, deadline=None)
@given(scripted_runs())
def test_events_of_scripted_runs_round_trip(run: tuple[list[Any], Script]) -> None:
    triples, _ = run
    for event, record in zip([e for e, _, _ in triples], recorded(triples), strict=True):
        assert decode_event(record) == event


def _concrete_event_classes() -> set[type[DomainEvent]]:
    found: set[type[DomainEvent]] = set()
    pending = list(DomainEvent.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "TYPE" in cls.__dict__:
            found.add(cls)
    return found


def test_every_event_class_is_registered_for_decoding() -> None:
    """A DomainEvent subclass left out of the registry could be appended but never decoded
    (by projections, the fold, SSE consumers): every class with a TYPE must be in it."""
    missing = sorted(c.__name__ for c in _concrete_event_classes() - set(EVENT_TYPES.values()))
    assert not missing, f"not in runs.events.EVENT_TYPES: {missing}"
    for name, cls in EVENT_TYPES.items():
        assert name == cls.TYPE


def test_the_specified_event_types_exist() -> None:
    # The event types the Runs API specification lists, as written there.
    specified = {
        "run.started",
        "message.delta",
        "tool.call",
        "tool.result",
        "run.waiting_for_input",
        "run.completed",
        "run.failed",
        "run.cancelled",
    }
    assert specified <= set(EVENT_TYPES)


# -- the SQL projection agrees with the fold --------------------------------------------------


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def scratch_location(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A database of each backend; every projection works in a transaction it rolls back."""
    if request.param == "sqlite":
        return str(tmp_path_factory.mktemp("fold") / "runs.db")
    return fresh_schema(request.getfixturevalue("pg_url"))


def project(triples: list[tuple[DomainEvent, int, str]], location: str) -> dict[str, Any]:
    """The run's row of the SQL runs projection after applying the run's events (in a
    transaction rolled back afterwards, so the database stays empty)."""
    db = connect_database(location)
    try:
        db.begin_schema()
        projections = [ThreadsProjection(), RunsProjection()]
        for projection in projections:
            projection.create(db)
        for record in recorded(triples):
            for projection in projections:
                projection.apply(db, record)
        rows = db.fetch_all(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs")
    finally:
        db.rollback()
        db.close()
    assert len(rows) == 1
    return dict(zip(RUN_COLUMNS, rows[0], strict=True))


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scripted_runs())
def test_runs_projection_matches_the_fold(
    scratch_location: str, run: tuple[list[Any], Script]
) -> None:
    triples, script = run
    state = script.state
    row = project(triples, scratch_location)
    expected = {
        "run_id": state.run_id,
        "org_id": state.org_id,
        "thread_id": state.thread_id,
        "status": state.status,
        "route_id": state.route_id,
        "model": state.model,
        "persona_id": state.persona_id,
        "trace_id": state.trace_id,
        "created_by_user_id": state.created_by_user_id,
        "created_at": state.created_at,
        "completed_at": state.completed_at,
        "failed_at": state.failed_at,
        "cancelled_at": state.cancelled_at,
        "duration_ms": state.duration_ms,
        "total_input_tokens": state.total_input_tokens,
        "total_output_tokens": state.total_output_tokens,
        "cache_read_tokens": state.cache_read_tokens,
        "cache_write_tokens": state.cache_write_tokens,
        "total_cost_usd": state.total_cost_usd,
        "cache_hit_rate": state.cache_hit_rate,
        "credits_multiplier": state.credits_multiplier,
        "credits_used": state.credits_used,
        "error_class": state.error_class,
        "error_message": state.error_message,
        "usage_estimated": int(state.usage_estimated),
        "retry_of": state.retry_of,
    }
    assert row == expected


# -- estimated usage is never counted twice, whatever the order -------------------------------


def _usage(call: int, figures: tuple[int, int, int, int, float], estimated: bool) -> RunUsage:
    inputs, outputs, reads, writes, cost = figures
    return RunUsage(
        model="m",
        input_tokens=inputs,
        output_tokens=outputs,
        cache_read_tokens=reads,
        cache_write_tokens=writes,
        cost_usd=cost,
        call=call,
        estimated=estimated,
    )


figures = st.tuples(tokens, tokens, tokens, tokens, costs)
# Per model call: what was logged for it — an estimate (the call was cut), the provider's
# report, or both (the report arriving after all, before or after the estimate).
call_usage = st.one_of(
    st.tuples(figures).map(lambda f: [(f[0], True)]),
    st.tuples(figures).map(lambda f: [(f[0], False)]),
    st.tuples(figures, figures).map(lambda f: [(f[0], True), (f[1], False)]),
    st.tuples(figures, figures, figures).map(lambda f: [(f[0], True), (f[1], False), (f[2], True)]),
)


@st.composite
def usage_orders(draw: st.DrawFn) -> tuple[list[RunUsage], dict[int, list[RunUsage]]]:
    """Usage events of several model calls, interleaved in any order."""
    per_call = draw(st.lists(call_usage, min_size=1, max_size=5))
    events = [
        _usage(call, f, estimated)
        for call, logged in enumerate(per_call, start=1)
        for f, estimated in logged
    ]
    order = draw(st.permutations(events))
    by_call = {c: [e for e in events if e.call == c] for c in range(1, len(per_call) + 1)}
    return list(order), by_call


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(started, usage_orders())
def test_each_model_call_is_counted_once_whatever_the_order(
    scratch_location: str,
    first: RunStarted,
    drawn: tuple[list[RunUsage], dict[int, list[RunUsage]]],
) -> None:
    order, by_call = drawn
    triples: list[tuple[DomainEvent, int, str]] = [(first, 1, stamp(0))]
    triples += [(e, seq, stamp(seq)) for seq, e in enumerate(order, start=2)]
    state = fold(triples)
    assert state is not None
    # A call's reported usage wins over its estimate; an estimate alone counts once.
    counted = []
    estimated_calls = set()
    for call, logged in by_call.items():
        reported = [u for u in logged if not u.estimated]
        if reported:
            counted += reported
        else:
            counted.append(next(u for u in order if u.call == call))
            estimated_calls.add(call)
    assert state.total_input_tokens == sum(u.input_tokens for u in counted)
    assert state.total_output_tokens == sum(u.output_tokens for u in counted)
    assert state.cache_read_tokens == sum(u.cache_read_tokens for u in counted)
    assert state.cache_write_tokens == sum(u.cache_write_tokens for u in counted)
    assert state.total_cost_usd == pytest.approx(sum(u.cost_usd for u in counted), abs=1e-9)
    assert state.usage_estimated == bool(estimated_calls)
    assert set(state.estimates) == estimated_calls
    # The SQL projection counts exactly the same, to the last bit of the float.
    row = project(triples, scratch_location)
    assert (
        row["total_input_tokens"],
        row["total_output_tokens"],
        row["cache_read_tokens"],
        row["cache_write_tokens"],
        row["total_cost_usd"],
        row["credits_used"],
        row["usage_estimated"],
    ) == (
        state.total_input_tokens,
        state.total_output_tokens,
        state.cache_read_tokens,
        state.cache_write_tokens,
        state.total_cost_usd,
        state.credits_used,
        int(state.usage_estimated),
    )


def test_a_cancel_recorded_before_receipts_answers_one_from_the_tool_events() -> None:
    """``run.cancelled`` without ``tool_calls`` (an older log): the receipt is read from the tool
    events, and a call without a result counts as never started (nothing says it ran)."""
    first = RunStarted(
        run_id=RUN_ID,
        thread_id="t",
        org_id="o",
        created_by_user_id="u",
        trace_id="trace",
        route_id="scripted",
        provider="scripted",
        model="m",
    )
    events: list[DomainEvent] = [
        first,
        ToolCalled(tool_call_id="a", name="calculator"),
        ToolCalled(tool_call_id="b", name="calculator"),
        ToolResult(tool_call_id="a", name="calculator", output="1"),
        RunCancelRequested(),
        RunCancelled(),
    ]
    state = fold([(e, seq, stamp(seq)) for seq, e in enumerate(events, start=1)])
    assert state is not None
    assert cancel_receipt(state) == ToolCallOutcomes(completed=["a"], not_started=["b"])
