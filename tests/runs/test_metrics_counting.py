"""Token and cost counters count each model call once, as the run's own accounting does: an
estimate (a cut call) only for a call with no usage yet, and a reported usage that follows an
estimate adds only what it has beyond it (a counter cannot go down)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from eventstore import RecordedEvent
from runs import metrics
from runs.events import DomainEvent, RunCompleted, RunUsage, encode_event


def recorded(position: int, stream: str, event: DomainEvent) -> RecordedEvent:
    new = encode_event(event)
    at = "2026-01-01T00:00:00.000Z"
    return RecordedEvent(position, stream, position, new.type, new.data.decode(), at, "0" * 64)


def tokens(model: str, kind: str) -> float:
    return REGISTRY.get_sample_value("runlog_tokens_total", {"model": model, "kind": kind}) or 0.0


def cost(model: str) -> float:
    return REGISTRY.get_sample_value("runlog_cost_usd_total", {"model": model}) or 0.0


def test_each_call_is_counted_once() -> None:
    model, stream = "counting-model", "run-counting"
    start_input, start_cost = tokens(model, "input"), cost(model)

    def usage(position: int, call: int, inputs: int, estimated: bool, usd: float) -> None:
        event = RunUsage(
            model=model, input_tokens=inputs, call=call, estimated=estimated, cost_usd=usd
        )
        metrics.observe_commit([recorded(position, stream, event)], 0.001)

    usage(1, 1, 100, True, 0.5)  # call 1 cut: its estimate counts
    assert tokens(model, "input") - start_input == 100
    usage(2, 1, 120, False, 0.75)  # its reported usage: only the 20 beyond the estimate
    assert tokens(model, "input") - start_input == 120
    assert abs(cost(model) - start_cost - 0.75) < 1e-12
    usage(3, 1, 500, True, 9.0)  # an estimate after the reported usage: not counted
    assert tokens(model, "input") - start_input == 120
    usage(4, 2, 30, False, 0.25)  # another call, reported: counted in full
    assert tokens(model, "input") - start_input == 150
    usage(5, 3, 40, True, 0.5)  # an estimate higher than the usage reported after it
    usage(6, 3, 10, False, 0.125)
    assert tokens(model, "input") - start_input == 190
    assert abs(cost(model) - start_cost - 1.5) < 1e-12

    metrics.observe_commit([recorded(7, stream, RunCompleted())], 0.001)
    assert stream not in metrics._counted_calls
