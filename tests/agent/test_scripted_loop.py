"""The agent loop on the scripted provider: one tool round trip, as the log and SSE show it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from runs.events import run_stream
from runs.providers.base import ModelRequest, ProviderEvent, Stop, TextDelta, Usage
from tests.agent.conftest import MakeApi, events_of, only, types_of, wait_for_event
from tests.conftest import Api


async def sse_frames(api: Api, run_id: str) -> list[dict[str, Any]]:
    """Every frame of the run's history through ``GET /events?follow=0``."""
    async with api.client.get(
        f"/v1/runs/{run_id}/events", params={"follow": "0"}, headers=api.headers()
    ) as response:
        assert response.status == 200
        text = await response.text()
    return [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


async def test_tool_directive_round_trip(make_api: MakeApi) -> None:
    api = await make_api()
    thread_id, run_id = await api.start_run('/tool calculator {"expression": "6*7"}')
    run = await api.wait_for(run_id)
    assert run["status"] == "completed"

    events = await events_of(api, run_id)
    [call] = only(events, "tool.call")
    [result] = only(events, "tool.result")
    assert call["name"] == "calculator"
    assert call["arguments"] == {"expression": "6*7"}
    assert call["call"] == 1
    assert result == {
        "tool_call_id": call["tool_call_id"],
        "name": "calculator",
        "output": "42",
        "is_error": False,
    }
    deltas = only(events, "message.delta")
    assert "".join(d["content"] for d in deltas) == "tool calculator returned: 42"
    assert {d["call"] for d in deltas} == {2}
    assert {d["role"] for d in deltas} == {"assistant"}
    assert [u["call"] for u in only(events, "run.usage")] == [1, 2]
    [completed] = only(events, "run.completed")

    kinds = types_of(events)
    assert kinds[0] == "run.started"
    assert kinds[-1] == "run.completed"
    assert (
        kinds.index("tool.call")
        < kinds.index("tool.result")
        < kinds.index("message.delta")
        < kinds.index("run.completed")
    )

    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", '/tool calculator {"expression": "6*7"}'),
        ("assistant", "tool calculator returned: 42"),
    ]
    assert messages[1]["id"] == completed["message_id"]
    assert messages[1]["run_id"] == run_id

    # SSE shows the same history, in seq order, with the documented frame shape.
    frames = await sse_frames(api, run_id)
    assert [f["type"] for f in frames] == kinds
    assert [f["seq"] for f in frames] == list(range(1, len(kinds) + 1))
    assert all(set(f) == {"seq", "type", "data", "created_at"} for f in frames)
    assert next(f for f in frames if f["type"] == "tool.result")["data"]["output"] == "42"


async def test_echo_and_failure(make_api: MakeApi) -> None:
    api = await make_api()
    thread_id, run_id = await api.start_run("hello\nworld")
    assert (await api.wait_for(run_id))["status"] == "completed"
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert messages[-1]["content"] == "echo: hello\nworld"

    _, run_id = await api.start_run("/fail")
    run = await api.wait_for(run_id)
    assert (run["status"], run["error_class"]) == ("failed", "provider.error")
    assert types_of(await events_of(api, run_id))[-1] == "run.failed"


async def test_cancel_during_a_slow_scripted_stream(make_api: MakeApi) -> None:
    api = await make_api()
    text = "a fairly long answer that streams slowly"
    _, run_id = await api.start_run(f"/slow 200\n{text}")
    await wait_for_event(api, run_id, "message.delta")
    await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)
    # The cancel answers once the run's task has stopped and run.cancelled is in the log:
    # nothing is left that could append after it.
    task = api.runtime.supervisor.tasks.get(run_id)
    assert task is None or task.done()
    _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
    assert run["status"] == "cancelled"
    events = await events_of(api, run_id)
    assert types_of(events)[-1] == "run.cancelled"
    assert types_of(events).count("run.cancelled") == 1
    # The stream was cut: at 200 ms a chunk, the whole reply would have taken seconds.
    streamed = "".join(d["content"] for d in only(events, "message.delta"))
    assert 0 < len(streamed) < len(f"echo: {text}")


async def test_deltas_are_coalesced_within_the_window(make_api: MakeApi) -> None:
    api = await make_api(delta_coalesce_ms=50)
    text = " ".join(f"word{i}" for i in range(200))
    _, run_id = await api.start_run(text)
    assert (await api.wait_for(run_id))["status"] == "completed"
    deltas = only(await events_of(api, run_id), "message.delta")
    reply = f"echo: {text}"
    assert "".join(d["content"] for d in deltas) == reply
    # The scripted provider yields 4-character chunks; the log holds far fewer deltas.
    assert len(deltas) < len(reply) // 4 // 4


async def test_text_that_arrived_together_is_one_delta_the_first_included(
    make_api: MakeApi,
) -> None:
    """The scripted provider hands over its whole reply (4-character chunks) before the run's
    task takes any of it: with a window, what arrived together is one delta, appended with the
    call's end; without one, every chunk is a delta of its own."""
    text = "hello, how are you today?"
    reply = f"echo: {text}"
    chunks = [reply[i : i + 4] for i in range(0, len(reply), 4)]
    for window_ms, expected in ((50, [reply]), (0, chunks)):
        api = await make_api(delta_coalesce_ms=window_ms)
        _, run_id = await api.start_run(text)
        assert (await api.wait_for(run_id))["status"] == "completed"
        events = await events_of(api, run_id)
        assert [d["content"] for d in only(events, "message.delta")] == expected
        assert types_of(events)[-3:] == ["message.delta", "run.usage", "run.completed"]


class PausingProvider:
    """Streams ``first``, lets the run's task take it, streams ``second``, then says nothing
    until ``gate`` is set."""

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate

    async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        yield TextDelta("first ")
        # The run's task was woken by "first " before this task gave way: it takes it alone
        # and appends it, and "second" arrives while that append is under way.
        await asyncio.sleep(0)
        yield TextDelta("second")
        await self.gate.wait()
        yield Usage(input_tokens=1, output_tokens=2)
        yield Stop("end_turn")


async def test_buffered_text_is_flushed_when_the_window_ends_while_the_provider_is_silent(
    make_api: MakeApi,
) -> None:
    """The first delta goes out at once; the second waits in the buffer for the coalescing
    window, and the window's end writes it although nothing more arrives from the provider."""
    gate = asyncio.Event()
    api = await make_api(delta_coalesce_ms=50, provider_for=lambda route: PausingProvider(gate))
    _, run_id = await api.start_run("hello")
    contents: list[str] = []
    events = api.runtime.store.subscribe(run_stream(run_id), 0)
    try:
        async with asyncio.timeout(5):
            async for event in events:
                if event.type == "message.delta":
                    contents.append(json.loads(event.data)["content"])
                if contents == ["first ", "second"]:
                    break
    finally:
        await events.aclose()
    assert not gate.is_set()
    gate.set()
    assert (await api.wait_for(run_id))["status"] == "completed"
    deltas = only(await events_of(api, run_id), "message.delta")
    assert [d["content"] for d in deltas] == ["first ", "second"]


async def test_a_new_runs_task_never_reads_its_stream_back(make_api: MakeApi) -> None:
    """A new run's first pass starts from the ``run.started`` its creation appended, and each
    later step from those events and the ones it appended (runs/executor.py, ``execute``).
    Here: a model call, the tool, a second model call and the completion, with no read of
    the run's stream from the run's task."""
    api = await make_api()
    store = api.runtime.store
    reads: list[str] = []
    read_stream = store.read_stream

    async def counted(stream: str, *args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        if task is not None and task.get_name().startswith("run-"):
            reads.append(stream)
        return await read_stream(stream, *args, **kwargs)

    store.read_stream = counted  # type: ignore[method-assign]
    _, run_id = await api.start_run('/tool calculator {"expression": "6*7"}')
    assert (await api.wait_for(run_id))["status"] == "completed"
    kinds = types_of(await events_of(api, run_id))
    assert kinds.count("run.usage") == 2  # two model calls
    assert kinds[-1] == "run.completed"
    assert reads == []

    # A run launched without its events (a restart, an input) reads them once per pass.
    api.runtime.supervisor.launch(run_id)
    await asyncio.wait_for(asyncio.gather(*api.runtime.supervisor.tasks.values()), 10)
    assert reads == [run_stream(run_id)]


async def test_an_answer_without_tool_calls_ends_and_completes_the_run_in_one_append(
    make_api: MakeApi,
) -> None:
    """The last model call's end (its last text, its usage) and ``run.completed`` with the
    thread's message are one append: one commit, nothing a crash could separate."""
    api = await make_api()
    store = api.runtime.store
    appends: list[list[tuple[str, list[str]]]] = []
    submit_many = store.submit_many

    def recorded(requests: Any) -> Any:
        task = asyncio.current_task()
        if task is not None and task.get_name().startswith("run-"):
            appends.append([(r.stream, [e.type for e in r.events]) for r in requests])
        return submit_many(requests)

    store.submit_many = recorded  # type: ignore[method-assign]
    thread_id, run_id = await api.start_run("hello")
    assert (await api.wait_for(run_id))["status"] == "completed"
    last = appends[-1]
    assert last[0][0] == run_stream(run_id)
    assert last[0][1][-2:] == ["run.usage", "run.completed"]
    assert set(last[0][1][:-2]) <= {"message.delta"}
    assert last[1][1] == ["message.added"]
    kinds = types_of(await events_of(api, run_id))
    assert kinds.count("run.usage") == 1
    assert kinds[-2:] == ["run.usage", "run.completed"]
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert messages[-1]["content"] == "echo: hello"
