"""Human input: questions (``ask_user``) and confirmations (``confirm_tools``), through the
real app with the scripted provider."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import MakeApi, events_of, only, types_of, write_persona
from tests.conftest import ADMIN_KEY, Api, app_factory

MAX_BYTES = 32 * 1024


def careful_persona(personas_dir: Path) -> None:
    write_persona(
        personas_dir,
        "careful",
        1,
        tools=["calculator", "current_time", "ask_user"],
        confirm_tools=["calculator"],
    )


@pytest.fixture
async def api(make_api: MakeApi, personas_dir: Path) -> Api:
    careful_persona(personas_dir)
    # Coalesce deltas: the scripted echo of a 32 KB answer is thousands of 4-character chunks.
    return await make_api(personas_dir=str(personas_dir), delta_coalesce_ms=20)


@pytest.fixture
async def api_on_both(aiohttp_client: Any, db_location: str, personas_dir: Path) -> Api:
    """``api`` once per backend."""
    careful_persona(personas_dir)
    app = app_factory(db_location)(personas_dir=str(personas_dir), delta_coalesce_ms=20)
    return Api(await aiohttp_client(app), ADMIN_KEY)


async def waiting_run(api: Api, content: str, **body: Any) -> tuple[str, str, dict[str, Any]]:
    """A run that now waits for input: ``(thread_id, run_id, run.waiting_for_input data)``."""
    thread_id, run_id = await api.start_run(content, **body)
    run = await api.wait_for(run_id, {"waiting_for_input", "completed", "failed", "cancelled"})
    assert run["status"] == "waiting_for_input", run
    [waiting] = only(await events_of(api, run_id), "run.waiting_for_input")
    return thread_id, run_id, waiting


async def post_input(api: Api, run_id: str, body: Any) -> tuple[int, Any]:
    return await api.request("POST", f"/v1/runs/{run_id}/input", json=body)


async def answer(api: Api, thread_id: str) -> str:
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert messages[-1]["role"] == "assistant"
    return str(messages[-1]["content"])


async def test_question_waits_without_a_task_then_continues_with_the_answer(
    api_on_both: Api,
) -> None:
    api = api_on_both
    thread_id, run_id, waiting = await waiting_run(api, "/ask what colour?")
    assert waiting["kind"] == "question"
    assert waiting["prompt"] == "what colour?"
    assert waiting["tool_name"] == "ask_user"
    assert waiting["request_id"]
    _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
    assert run["status"] == "waiting_for_input"

    # The run's task ends on its own; nothing is left running for a waiting run.
    supervisor = api.runtime.supervisor
    task = supervisor.tasks.get(run_id)
    if task is not None:
        await asyncio.wait_for(task, 2.0)
        await asyncio.sleep(0)  # the task's done-callback forgets it
    assert run_id not in supervisor.tasks
    assert not [t for t in asyncio.all_tasks() if run_id in t.get_name()]

    status, body = await post_input(api, run_id, {"content": "blue"})
    assert (status, body) == (200, {"ok": True})
    run = await api.wait_for(run_id)
    assert run["status"] == "completed"
    assert await answer(api, thread_id) == "you answered: blue"

    events = await events_of(api, run_id)
    [provided] = only(events, "run.input_provided")
    assert provided["request_id"] == waiting["request_id"]
    assert provided["content"] == "blue"
    assert provided["user_id"] == run["created_by_user_id"]
    [call] = only(events, "tool.call")
    [result] = only(events, "tool.result")
    assert call["tool_call_id"] == result["tool_call_id"] == waiting["tool_call_id"]
    assert (result["output"], result["is_error"]) == ("blue", False)
    kinds = types_of(events)
    assert (
        kinds.index("run.waiting_for_input")
        < kinds.index("run.input_provided")
        < kinds.index("tool.result")
    )


async def test_confirmation_approved_runs_the_tool(api_on_both: Api) -> None:
    api = api_on_both
    thread_id, run_id, waiting = await waiting_run(
        api, '/tool calculator {"expression": "2+3"}', persona_id="careful"
    )
    assert waiting["kind"] == "confirmation"
    assert waiting["tool_name"] == "calculator"
    assert waiting["arguments"] == {"expression": "2+3"}
    assert "tool.result" not in types_of(await events_of(api, run_id))  # not run yet

    status, body = await post_input(api, run_id, {"content": "approve"})
    assert (status, body) == (200, {"ok": True})
    run = await api.wait_for(run_id)
    assert run["status"] == "completed"
    [result] = only(await events_of(api, run_id), "tool.result")
    assert (result["output"], result["is_error"]) == ("5", False)
    assert await answer(api, thread_id) == "tool calculator returned: 5"


async def test_confirmation_denied_gives_an_error_result_and_the_model_goes_on(
    api: Api,
) -> None:
    thread_id, run_id, _ = await waiting_run(
        api, '/tool calculator {"expression": "2+3"}', persona_id="careful@1"
    )
    status, _ = await post_input(api, run_id, {"content": " Deny "})
    assert status == 200
    run = await api.wait_for(run_id)
    assert run["status"] == "completed"
    events = await events_of(api, run_id)
    [provided] = only(events, "run.input_provided")
    assert provided["content"] == "deny"
    [result] = only(events, "tool.result")
    assert result["is_error"] is True
    assert "denied" in result["output"]
    assert await answer(api, thread_id) == f"tool calculator returned: {result['output']}"
    assert len(only(events, "run.usage")) == 2  # the model was called again after the denial


async def test_a_confirmation_accepts_only_approve_or_deny(api: Api) -> None:
    _, run_id, _ = await waiting_run(
        api, '/tool calculator {"expression": "1"}', persona_id="careful"
    )
    for content in ("yes", "ok", "approved", "deny it"):
        status, body = await post_input(api, run_id, {"content": content})
        assert (status, body["code"]) == (400, "validation.content"), content
    _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
    assert run["status"] == "waiting_for_input"
    assert "run.input_provided" not in types_of(await events_of(api, run_id))
    status, _ = await post_input(api, run_id, {"content": "approve"})
    assert status == 200
    assert (await api.wait_for(run_id))["status"] == "completed"


async def test_input_when_not_waiting_is_409(api: Api) -> None:
    _, run_id = await api.start_run("hello")
    assert (await api.wait_for(run_id))["status"] == "completed"
    status, body = await post_input(api, run_id, {"content": "late"})
    assert (status, body["code"]) == (409, "runs.not_waiting_for_input")
    assert body["trace_id"]

    # An answered question cannot be answered twice.
    _, asked, _ = await waiting_run(api, "/ask name?")
    assert (await post_input(api, asked, {"content": "Ada"}))[0] == 200
    await api.wait_for(asked)
    status, body = await post_input(api, asked, {"content": "again"})
    assert (status, body["code"]) == (409, "runs.not_waiting_for_input")


@pytest.mark.parametrize(
    "body",
    [{}, {"content": ""}, {"content": "   \n"}, {"content": 42}, {"content": None}],
    ids=["missing", "empty", "blank", "number", "null"],
)
async def test_content_must_be_a_non_empty_string(api: Api, body: dict[str, Any]) -> None:
    _, run_id, _ = await waiting_run(api, "/ask anything?")
    status, error = await post_input(api, run_id, body)
    assert (status, error["code"]) == (400, "validation.content")
    _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
    assert run["status"] == "waiting_for_input"


async def test_content_limit_is_32768_bytes_of_utf8(api: Api) -> None:
    thread_id, run_id, _ = await waiting_run(api, "/ask a long answer?")
    too_large = [
        "a" * (MAX_BYTES + 1),
        "é" * (MAX_BYTES // 2) + "a",  # 16,384 two-byte characters and one more byte
        "😀" * (MAX_BYTES // 4 - 1) + "abcde",  # 32,764 + 5 bytes
    ]
    for content in too_large:
        assert len(content.encode()) == MAX_BYTES + 1
        status, body = await post_input(api, run_id, {"content": content})
        assert (status, body["code"]) == (413, "validation.content_too_large")
    _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
    assert run["status"] == "waiting_for_input"

    exact = "😀" * (MAX_BYTES // 4)  # 8,192 four-byte characters (far fewer than 32,768)
    assert len(exact.encode()) == MAX_BYTES
    assert await post_input(api, run_id, {"content": exact}) == (200, {"ok": True})
    assert (await api.wait_for(run_id))["status"] == "completed"
    [provided] = only(await events_of(api, run_id), "run.input_provided")
    assert provided["content"] == exact
    assert await answer(api, thread_id) == f"you answered: {exact}"

    _, other, _ = await waiting_run(api, "/ask and ascii?")
    assert await post_input(api, other, {"content": "x" * MAX_BYTES}) == (200, {"ok": True})
    assert (await api.wait_for(other))["status"] == "completed"


async def test_racing_submissions_exactly_one_wins(api_on_both: Api) -> None:
    api = api_on_both
    for round_ in range(3):
        thread_id, run_id, _ = await waiting_run(api, f"/ask race {round_}?")
        results = await asyncio.gather(
            post_input(api, run_id, {"content": "first"}),
            post_input(api, run_id, {"content": "second"}),
        )
        statuses = sorted(status for status, _ in results)
        assert statuses == [200, 409], results
        loser = next(body for status, body in results if status == 409)
        assert loser["code"] == "runs.not_waiting_for_input"
        assert (await api.wait_for(run_id))["status"] == "completed"
        [provided] = only(await events_of(api, run_id), "run.input_provided")
        winner = "first" if results[0][0] == 200 else "second"
        assert provided["content"] == winner
        assert await answer(api, thread_id) == f"you answered: {winner}"


async def test_cancel_while_waiting(api_on_both: Api) -> None:
    api = api_on_both
    _, run_id, _ = await waiting_run(api, "/ask will you cancel?")
    _, receipt = await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)
    # The question (an ask_user tool call) was asked and never answered: it never ran.
    assert receipt == {
        "ok": True,
        "status": "cancelled",
        "last_seq": 6,  # started, usage, tool.call, waiting, cancel_requested, cancelled
        "tool_calls": {"completed": [], "interrupted": [], "not_started": ["call_1"]},
    }
    _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
    assert run["status"] == "cancelled"
    assert run["cancelled_at"] is not None
    kinds = types_of(await events_of(api, run_id))
    assert kinds[-3:] == ["run.waiting_for_input", "run.cancel_requested", "run.cancelled"]
    status, body = await post_input(api, run_id, {"content": "too late"})
    assert (status, body["code"]) == (409, "runs.not_waiting_for_input")
    assert run_id not in api.runtime.supervisor.tasks


async def test_a_launch_while_the_task_finishes_its_step_is_not_lost(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Input can land while the task that appended run.waiting_for_input is still winding
    down; the task then makes another pass over the log (under the lease it holds) before it
    ends."""
    _, run_id = await api.start_run("/ask what colour?")
    await api.wait_for(run_id, {"waiting_for_input"})
    supervisor = api.runtime.supervisor
    passes: list[str] = []
    one_pass = supervisor._run

    async def counted(run_id: str, resumed: bool, *args: Any) -> str | None:
        passes.append(run_id)
        if len(passes) == 1:
            supervisor.launch(run_id)  # arrives while this pass is under way
            assert run_id in supervisor._relaunch
        return await one_pass(run_id, resumed, *args)

    monkeypatch.setattr(supervisor, "_run", counted)
    supervisor.launch(run_id)  # a task that will find the run waiting and end
    await supervisor.tasks[run_id]
    assert passes == [run_id, run_id]
    while run_id in supervisor.tasks:  # the done callback runs on the next loop turn
        await asyncio.sleep(0)
    assert not supervisor._relaunch


async def test_a_launch_after_the_task_ended_but_before_it_is_forgotten_is_not_lost(
    api: Api,
) -> None:
    """A task's done callback (which forgets it) runs on the loop turn after it ends: a launch
    in between starts a new task rather than noting a relaunch the callback would drop."""
    thread_id, run_id, _ = await waiting_run(api, "/ask what colour?")
    supervisor = api.runtime.supervisor
    while run_id in supervisor.tasks:
        await asyncio.sleep(0)

    async def ended() -> None:
        return None

    # The run's task as it stands once it has returned, before its callback has run.
    finished = asyncio.create_task(ended())
    await finished
    supervisor.tasks[run_id] = finished
    status, body = await post_input(api, run_id, {"content": "blue"})
    assert (status, body) == (200, {"ok": True})

    assert supervisor.tasks.get(run_id) is not finished
    run = await api.wait_for(run_id)
    assert run["status"] == "completed"
    assert await answer(api, thread_id) == "you answered: blue"
