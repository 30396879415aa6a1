"""The run aggregate: a pure fold of its events and pure command decisions.

See docs/architecture.md, "The domain".

Neither ``evolve`` nor ``decide`` does I/O, reads the clock or makes ids: timestamps come from the
recorded events and ids are passed in with the commands.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime

import msgspec

from eventstore import RecordedEvent
from runs.errors import InvalidTransition, ValidationFailed
from runs.events import (
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
)

__all__ = [
    "LIVE_STATUSES",
    "RUN_STATUSES",
    "TERMINAL_STATUSES",
    "RunState",
    "cancel_receipt",
    "credits_for",
    "decide_cancel",
    "decide_input",
    "evolve",
    "fold_recorded",
    "tool_call_outcomes",
]

RUN_STATUSES = ("running", "waiting_for_input", "completed", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
#: A live run holds its thread and a slot of its org's limit.
LIVE_STATUSES = frozenset({"running", "waiting_for_input"})

# Which event types each status accepts. Terminal statuses accept nothing: terminal is final.
_ALLOWED: dict[str, frozenset[str]] = {
    "running": frozenset(
        {
            MessageDelta.TYPE,
            ToolCalled.TYPE,
            ToolResult.TYPE,
            RunUsage.TYPE,
            RunRetried.TYPE,
            RunResumed.TYPE,
            RunWaitingForInput.TYPE,
            RunCancelRequested.TYPE,
            RunCancelled.TYPE,
            RunCompleted.TYPE,
            RunFailed.TYPE,
        }
    ),
    "waiting_for_input": frozenset(
        {
            RunInputProvided.TYPE,
            RunCancelRequested.TYPE,
            RunCancelled.TYPE,
            RunFailed.TYPE,
            RunResumed.TYPE,
        }
    ),
}


class RunState(msgspec.Struct, kw_only=True):
    """Everything the service knows about a run after folding its events."""

    run_id: str
    thread_id: str
    org_id: str
    created_by_user_id: str
    trace_id: str
    route_id: str
    model: str
    persona_id: str | None
    credits_multiplier: float
    created_at: str
    status: str = "running"
    seq: int = 0
    completed_at: str | None = None
    failed_at: str | None = None
    cancelled_at: str | None = None
    ended_at: str | None = None
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    total_cost_usd: float = 0.0
    error_class: str | None = None
    error_message: str | None = None
    waiting: RunWaitingForInput | None = None
    retry_of: str | None = None
    #: Tool call id -> whether its result is in the log, in call order.
    tool_calls: dict[str, bool] = {}
    #: Estimated usages counted in the totals, by model call (replaced by a reported one).
    estimates: dict[int, RunUsage] = {}
    #: Model calls whose provider-reported usage is in the log.
    reported_calls: frozenset[int] = frozenset()
    #: The receipt recorded with ``run.cancelled``.
    cancelled_tool_calls: ToolCallOutcomes | None = None

    @property
    def usage_estimated(self) -> bool:
        """Whether the totals include an estimated usage."""
        return bool(self.estimates)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def cache_hit_rate(self) -> float | None:
        total = self.total_input_tokens + self.cache_read_tokens + self.cache_write_tokens
        return None if total == 0 else self.cache_read_tokens / total

    @property
    def credits_used(self) -> int:
        return credits_for(self.total_cost_usd, self.credits_multiplier)

    @property
    def duration_ms(self) -> int | None:
        return None if self.ended_at is None else ms_between(self.created_at, self.ended_at)


def credits_for(cost_usd: float, multiplier: float) -> int:
    """``ceil(cost * 1000 * multiplier)``, rounded first so float noise
    (0.1 + 0.2) cannot add a credit."""
    return math.ceil(round(cost_usd * 1000 * multiplier, 9))


def ms_between(start: str, end: str) -> int:
    """Milliseconds between two of the store's RFC 3339 timestamps."""
    parse = datetime.fromisoformat
    return round(
        (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()
        * 1000
    )


def evolve(state: RunState | None, event: DomainEvent, seq: int, at: str) -> RunState:
    """The run after ``event`` (recorded with ``seq`` at ``at``).

    Raises :class:`InvalidTransition` for an event the state does not allow, so a fold also
    checks the log it folds.
    """
    if state is None:
        if not isinstance(event, RunStarted):
            raise InvalidTransition(f"a run must start with run.started, not {event.TYPE}")
        return RunState(
            run_id=event.run_id,
            thread_id=event.thread_id,
            org_id=event.org_id,
            created_by_user_id=event.created_by_user_id,
            trace_id=event.trace_id,
            route_id=event.route_id,
            model=event.model,
            persona_id=event.persona_id,
            credits_multiplier=event.credits_multiplier,
            created_at=at,
            seq=seq,
            retry_of=event.retry_of,
        )
    if event.TYPE not in _ALLOWED.get(state.status, frozenset()):
        raise InvalidTransition(
            f"run {state.run_id} is {state.status}: {event.TYPE} is not allowed",
            code="runs.invalid_transition",
        )
    state = msgspec.structs.replace(state, seq=seq)
    match event:
        case RunUsage(estimated=True):
            if event.call not in state.reported_calls and event.call not in state.estimates:
                _count(state, event, 1)
                state.estimates = {**state.estimates, event.call: event}
        case RunUsage():
            estimate = state.estimates.get(event.call)
            if estimate is not None:
                _count(state, estimate, -1)
                state.estimates = {c: u for c, u in state.estimates.items() if c != event.call}
            _count(state, event, 1)
            state.reported_calls = state.reported_calls | {event.call}
        case ToolCalled():
            state.tool_calls = {**state.tool_calls, event.tool_call_id: False}
        case ToolResult():
            state.tool_calls = {**state.tool_calls, event.tool_call_id: True}
        case RunWaitingForInput():
            state.status = "waiting_for_input"
            state.waiting = event
        case RunInputProvided():
            state.status = "running"
            state.waiting = None
        case RunCompleted():
            state.status = "completed"
            state.completed_at = state.ended_at = at
        case RunFailed():
            state.status = "failed"
            state.failed_at = state.ended_at = at
            state.error_class = event.error_class
            state.error_message = event.message
            state.waiting = None
        case RunCancelled():
            state.status = "cancelled"
            state.cancelled_at = state.ended_at = at
            state.waiting = None
            state.cancelled_tool_calls = event.tool_calls
        case _:
            pass
    return state


def _count(state: RunState, usage: RunUsage, sign: int) -> None:
    """Add (``sign`` 1) or take back (-1) a usage; the runs projection does the same float
    operations in the same order, so both give identical totals."""
    state.total_input_tokens += sign * usage.input_tokens
    state.total_output_tokens += sign * usage.output_tokens
    state.cache_read_tokens += sign * usage.cache_read_tokens
    state.cache_write_tokens += sign * usage.cache_write_tokens
    if sign > 0:
        state.total_cost_usd += usage.cost_usd
    else:
        state.total_cost_usd -= usage.cost_usd


def fold_recorded(
    events: Iterable[RecordedEvent], state: RunState | None = None
) -> RunState | None:
    """Fold recorded events of a run's stream (optionally on top of ``state``)."""
    for recorded in events:
        state = evolve(state, decode_event(recorded), recorded.seq, recorded.created_at)
    return state


# -- decisions --------------------------------------------------------------------------------

CONFIRMATION_ANSWERS = frozenset({"approve", "deny"})


def tool_call_outcomes(state: RunState, interrupted: Iterable[str] = ()) -> ToolCallOutcomes:
    """The run's tool calls by outcome; ``interrupted`` names calls that were running."""
    cut = set(interrupted)
    done = [call_id for call_id, has_result in state.tool_calls.items() if has_result]
    open_calls = [call_id for call_id, has_result in state.tool_calls.items() if not has_result]
    return ToolCallOutcomes(
        completed=done,
        interrupted=[c for c in open_calls if c in cut],
        not_started=[c for c in open_calls if c not in cut],
    )


def cancel_receipt(state: RunState) -> ToolCallOutcomes:
    """The tool calls' outcomes as the run ended: as recorded with ``run.cancelled``, else
    (a completed or failed run, or a cancel recorded before receipts) from its tool events."""
    if state.cancelled_tool_calls is not None:
        return state.cancelled_tool_calls
    return tool_call_outcomes(state)


def decide_cancel(
    state: RunState, user_id: str | None, running_tool_calls: Iterable[str] = ()
) -> list[DomainEvent]:
    """Cancel: a terminal run is left alone (cancelling it is a no-op, not an error).
    ``running_tool_calls`` are the calls the cancel cut while they ran."""
    if state.terminal:
        return []
    outcomes = tool_call_outcomes(state, running_tool_calls)
    return [RunCancelRequested(user_id=user_id), RunCancelled(tool_calls=outcomes)]


def decide_input(state: RunState, content: str, user_id: str | None) -> list[DomainEvent]:
    """Answer the question or confirmation the run waits on."""
    if state.status != "waiting_for_input" or state.waiting is None:
        raise InvalidTransition(
            f"run is {state.status}, not waiting for input", code="runs.not_waiting_for_input"
        )
    if state.waiting.kind == "confirmation" and content.strip().lower() not in (
        CONFIRMATION_ANSWERS
    ):
        raise ValidationFailed(
            "this run waits for a confirmation: answer 'approve' or 'deny'",
            code="validation.content",
            field="content",
        )
    answer = content.strip().lower() if state.waiting.kind == "confirmation" else content
    return [RunInputProvided(request_id=state.waiting.request_id, content=answer, user_id=user_id)]
