"""The fold-decide-append helper and the supervisor never give up silently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog

from eventstore import SQLiteEventStore
from projections import all_projections
from runs.errors import InvalidTransition
from runs.events import MessageDelta, RunCompleted, RunStarted, encode_event, run_stream
from runs.executor import RunExecutor
from runs.repository import append_decided, load_run
from tests.conftest import Api

RUN = "0190a0b0-c0d0-7e0f-8a0b-0c0d0e0f1a2b"


def _started() -> RunStarted:
    return RunStarted(
        run_id=RUN,
        org_id="o",
        thread_id="t",
        created_by_user_id="u",
        route_id="scripted",
        provider="scripted",
        model="scripted",
        persona_id="default@1",
        trace_id="trace",
        credits_multiplier=1.0,
    )


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    store = await SQLiteEventStore.open(str(tmp_path / "r.db"), all_projections())
    await store.append(run_stream(RUN), [encode_event(_started())], 0)
    yield store
    await store.close()


async def test_append_decided_folds_again_after_losing_a_race(store: SQLiteEventStore) -> None:
    real_append = store.append
    raced = []

    async def append_after_a_rival(*args: Any, **kwargs: Any) -> Any:
        if not raced:  # a rival append lands between our fold and our append, once
            raced.append(
                await real_append(run_stream(RUN), [encode_event(MessageDelta(content="rival"))])
            )
        return await real_append(*args, **kwargs)

    store.append = append_after_a_rival  # type: ignore[method-assign]
    seen_seqs: list[int] = []

    def decide(state: Any) -> list[Any]:
        seen_seqs.append(state.seq)
        return [RunCompleted()]

    appended = await append_decided(store, RUN, decide)
    assert seen_seqs == [1, 2]  # decided again on the state that includes the rival's event
    assert [e.seq for e in appended] == [3]
    state = await load_run(store, RUN)
    assert state is not None and state.status == "completed"


async def test_append_decided_logs_when_it_gives_up(store: SQLiteEventStore) -> None:
    real_append = store.append

    async def always_raced(*args: Any, **kwargs: Any) -> Any:
        await real_append(run_stream(RUN), [encode_event(MessageDelta(content="rival"))])
        return await real_append(*args, **kwargs)

    store.append = always_raced  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        appended = await append_decided(store, RUN, lambda state: [RunCompleted()], attempts=3)
    assert appended == []
    assert [e for e in logs if e["event"] == "run.append_gave_up"] == [
        {"event": "run.append_gave_up", "run_id": RUN, "attempts": 3, "log_level": "warning"}
    ]


async def test_a_refusing_decision_is_raised_not_retried(store: SQLiteEventStore) -> None:
    calls = []

    def refuse(state: Any) -> list[Any]:
        calls.append(state)
        raise InvalidTransition("no", code="runs.invalid_transition")

    with pytest.raises(InvalidTransition):
        await append_decided(store, RUN, refuse)
    assert len(calls) == 1


async def test_the_supervisor_logs_when_a_run_keeps_losing_races(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventstore import ConcurrencyError

    attempts = []

    async def always_conflicts(self: RunExecutor, history: Any, events: Any) -> None:
        attempts.append(self.run_id)
        raise ConcurrencyError(run_stream(self.run_id), 1, 2)

    monkeypatch.setattr(RunExecutor, "execute", always_conflicts)
    with structlog.testing.capture_logs() as logs:
        _, run_id = await api.start_run("hello")
        # The task may have given up (and been forgotten) before the response arrived.
        task = api.runtime.supervisor.tasks.get(run_id)
        if task is not None:
            await task
    assert attempts == [run_id] * 3
    gave_up = [e for e in logs if e["event"] == "run.gave_up"]
    assert len(gave_up) == 1 and gave_up[0]["log_level"] == "error"
