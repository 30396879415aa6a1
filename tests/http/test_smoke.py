"""The happy path end to end through the real app, as a first check of the wiring."""

from __future__ import annotations

from tests.conftest import Api


async def test_scripted_run_completes_and_answers_on_the_thread(api: Api) -> None:
    thread_id, run_id = await api.start_run("hello world")
    run = await api.wait_for(run_id)
    assert run["status"] == "completed"
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"] == "echo: hello world"
    assert messages[1]["created_by_user_id"] is None
