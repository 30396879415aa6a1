"""What Arkloop's own clients need, through the real app: the streamed text in
``data.content_delta`` (as well as ``data.content``, the documented field),
``POST /v1/runs/{id}/cancel`` as well as ``:cancel``, and a reconnect at the end of a finished
run that closes at once."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from runs.events import run_stream
from tests.conftest import Api


async def sse(api: Api, run_id: str, **params: str) -> tuple[list[dict[str, Any]], float]:
    """Every frame of one connection read to its end, and how long the connection lasted."""
    started = time.monotonic()
    async with asyncio.timeout(10):
        async with api.client.get(
            f"/v1/runs/{run_id}/events", params=params, headers=api.headers()
        ) as response:
            assert response.status == 200
            text = await response.text()
    frames = [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: ")
    ]
    return frames, time.monotonic() - started


async def assistant_reply(api: Api, thread_id: str) -> str:
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert messages[-1]["role"] == "assistant"
    return str(messages[-1]["content"])


async def test_message_delta_carries_content_and_content_delta(api: Api) -> None:
    # Read live (the run streams slowly) and again from history: both carry both fields.
    thread_id, run_id = await api.start_run('/slow 5\nhéllo "wörld" ✓')
    live, _ = await sse(api, run_id)
    replay, _ = await sse(api, run_id, follow="0")
    assert live == replay
    deltas = [f["data"] for f in live if f["type"] == "message.delta"]
    assert len(deltas) > 1
    for data in deltas:
        assert list(data) == ["content", "role", "call", "content_delta"]
        assert data["content_delta"] == data["content"]
    # What Arkloop's CLI prints (content_delta) and what other clients print (content)
    # are both the answer.
    reply = 'echo: héllo "wörld" ✓'
    assert "".join(d["content_delta"] for d in deltas) == reply
    assert "".join(d["content"] for d in deltas) == reply
    assert await assistant_reply(api, thread_id) == reply
    # The log holds the text once: content_delta exists only on the wire.
    logged = await api.runtime.store.read_stream(run_stream(run_id), 0, 1000)
    assert all("content_delta" not in e.data for e in logged)
    # Other events are sent as logged.
    started = next(f for f in live if f["type"] == "run.started")
    assert started["data"] == json.loads(logged[0].data)


async def test_cancel_alias_behaves_and_answers_like_cancel(api: Api) -> None:
    _, by_colon = await api.start_run("/slow 200\nfirst")
    _, by_slash = await api.start_run("/slow 200\nsecond")
    _, colon = await api.request("POST", f"/v1/runs/{by_colon}:cancel", expect=200)
    _, slash = await api.request("POST", f"/v1/runs/{by_slash}/cancel", expect=200)
    assert set(slash) == set(colon) == {"ok", "status", "last_seq", "tool_calls"}
    for run_id, receipt in ((by_colon, colon), (by_slash, slash)):
        _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
        assert run["status"] == receipt["status"] == "cancelled"
        assert receipt["last_seq"] == await api.runtime.store.last_seq(run_stream(run_id))
        _, frames = await api.request("GET", f"/v1/runs/{run_id}/events?follow=0")
        assert "run.cancelled" in frames
    # Either path on either run answers the same thing once the run has ended.
    for run_id in (by_colon, by_slash):
        _, first = await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)
        _, second = await api.request("POST", f"/v1/runs/{run_id}/cancel", expect=200)
        assert first == second
    # Another org's run is not found, through either path.
    other = await api.new_org_key()
    for path in (f"/v1/runs/{by_slash}/cancel", f"/v1/runs/{by_slash}:cancel"):
        status, body = await api.request("POST", path, key=other)
        assert (status, body["code"]) == (404, "not_found")
    status, body = await api.request("POST", "/v1/runs/not-a-run/cancel")
    assert (status, body["code"]) == (404, "not_found")


async def test_reconnecting_at_the_end_of_a_cancelled_run_closes_at_once(api: Api) -> None:
    """A client that knows only run.completed and run.failed as terminal reconnects after the
    stream of a cancelled run closes; every reconnect gets nothing and is closed at once."""
    _, run_id = await api.start_run("/slow 50\na long enough answer")
    frames: list[dict[str, Any]] = []

    async def follow() -> None:
        more, _ = await sse(api, run_id)
        frames.extend(more)

    reader = asyncio.create_task(follow())
    await api.wait_for(run_id, {"running"})
    await api.request("POST", f"/v1/runs/{run_id}/cancel", expect=200)
    await reader  # the live stream closed after the terminal event
    assert frames[-1]["type"] == "run.cancelled"
    last = frames[-1]["seq"]

    for _ in range(3):  # what such a client does in a loop
        again, took = await sse(api, run_id, after_seq=str(last))
        assert again == []
        assert took < 1.0  # not held open until a heartbeat or a timeout
    async with api.client.get(
        f"/v1/runs/{run_id}/events", headers=api.headers(**{"Last-Event-ID": str(last)})
    ) as response:
        assert await response.read() == b": ping\n\n"  # the opening comment, no frame
