"""The cancel receipt (which tool calls finished, were cut, never started) and the usage of a
model call cut by a cancel, through the real app: a slow custom tool cut mid-way, a stream cut
mid-way, the receipt read again from the log and answered again for a finished run."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

from runs.tools import Tool
from tests.agent.conftest import (
    FAKE_ENV,
    MakeApi,
    anthropic_route,
    events_of,
    only,
    types_of,
    wait_for_event,
    write_persona,
)
from tests.agent.fake_anthropic import FakeAnthropic, Sse, SseEvent, message_start, text_events
from tests.conftest import Api


class SlowTool:
    """A custom tool that signals when it starts, then works until it is cut."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cut = asyncio.Event()

    async def run(self, arguments: dict[str, Any]) -> str:
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cut.set()
            raise
        return "done"


def tool_uses(*calls: tuple[str, str, dict[str, Any]]) -> list[SseEvent]:
    """One model answer asking for several tools at once (the wire format of the Messages API)."""
    events: list[SseEvent] = [message_start(input_tokens=40)]
    for index, (tool_id, name, arguments) in enumerate(calls):
        events += [
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": json.dumps(arguments)},
                },
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": index}),
        ]
    events += [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 30},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


async def test_receipt_of_a_run_cancelled_mid_tool(
    make_api: MakeApi, personas_dir: Path, fake: FakeAnthropic
) -> None:
    slow = SlowTool()
    write_persona(personas_dir, "worker", 1, tools=["calculator", "slow"])
    api = await make_api(
        personas_dir=str(personas_dir),
        routes=[anthropic_route(fake.url)],
        env=FAKE_ENV,
        tools=[
            Tool(
                name="slow",
                description="works for a long time",
                input_schema={"type": "object", "properties": {}},
                run=slow.run,
                timeout_s=60,
            )
        ],
    )
    # One answer asks for three tools: they run one after the other.
    fake.add(
        Sse(
            tool_uses(
                ("toolu_a", "calculator", {"expression": "6*7"}),
                ("toolu_b", "slow", {}),
                ("toolu_c", "calculator", {"expression": "1+1"}),
            )
        )
    )
    _, run_id = await api.start_run("do three things", persona_id="worker")
    await asyncio.wait_for(slow.started.wait(), 5)

    _, receipt = await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)
    assert slow.cut.is_set()  # the tool itself was stopped before the answer
    events = await events_of(api, run_id)
    assert receipt == {
        "ok": True,
        "status": "cancelled",
        "last_seq": len(events),
        "tool_calls": {
            "completed": ["toolu_a"],
            "interrupted": ["toolu_b"],
            "not_started": ["toolu_c"],
        },
    }
    [result] = only(events, "tool.result")
    assert (result["tool_call_id"], result["output"]) == ("toolu_a", "42")
    # The same facts are in the log, with the cancel.
    assert types_of(events)[-2:] == ["run.cancel_requested", "run.cancelled"]
    assert events[-1][1]["tool_calls"] == receipt["tool_calls"]
    # The completed call's usage was reported; nothing was cut mid-stream.
    [usage] = only(events, "run.usage")
    assert (usage["input_tokens"], usage["output_tokens"], usage["estimated"]) == (40, 30, False)

    # Cancelling again, through either path, answers the same receipt and appends nothing.
    for path in (f"/v1/runs/{run_id}:cancel", f"/v1/runs/{run_id}/cancel"):
        assert await api.request("POST", path, expect=200) == (200, receipt)
    assert len(await events_of(api, run_id)) == len(events)


async def test_receipt_and_estimated_usage_of_a_run_cancelled_mid_stream(
    make_api: MakeApi,
) -> None:
    api = await make_api()
    # A calculator call, then an answer streamed slowly, cut by the cancel.
    _, run_id = await api.start_run('/tool calculator {"expression": "6*7"}\n/slow 100')
    await wait_for_event(api, run_id, "message.delta")

    _, receipt = await api.request("POST", f"/v1/runs/{run_id}/cancel", expect=200)
    assert receipt["status"] == "cancelled"
    assert receipt["tool_calls"] == {"completed": ["call_1"], "interrupted": [], "not_started": []}

    events = await events_of(api, run_id)
    assert receipt["last_seq"] == len(events)
    assert types_of(events)[-3:] == ["run.usage", "run.cancel_requested", "run.cancelled"]
    reported, estimate = only(events, "run.usage")
    assert (reported["call"], reported["estimated"]) == (1, False)
    # The cut call never reported usage: estimated, output from what it streamed (bytes / 4,
    # rounded up), input from the request it sent.
    streamed = "".join(d["content"] for d in only(events, "message.delta") if d["call"] == 2)
    assert streamed and "tool calculator returned: 42".startswith(streamed)
    assert (estimate["call"], estimate["estimated"]) == (2, True)
    assert estimate["output_tokens"] == math.ceil(len(streamed.encode()) / 4)
    assert estimate["input_tokens"] > 0

    _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
    assert run["usage_estimated"] is True
    assert run["total_input_tokens"] == reported["input_tokens"] + estimate["input_tokens"]
    assert run["total_output_tokens"] == reported["output_tokens"] + estimate["output_tokens"]
    # As it stood before the cut call's usage, the run had none estimated.
    before = receipt["last_seq"] - 3
    _, then = await api.request("GET", f"/v1/runs/{run_id}?as_of_seq={before}", expect=200)
    assert (then["usage_estimated"], then["total_input_tokens"]) == (
        False,
        reported["input_tokens"],
    )
    _, now = await api.request(
        "GET", f"/v1/runs/{run_id}?as_of_seq={receipt['last_seq']}", expect=200
    )
    assert now["usage_estimated"] is True
    assert now["total_output_tokens"] == run["total_output_tokens"]
    # A run with only reported usage does not say it is estimated.
    _, done = await api.start_run("quick")
    assert (await api.wait_for(done))["usage_estimated"] is False


async def test_the_estimate_counts_the_request_actually_sent(
    make_api: MakeApi, fake: FakeAnthropic
) -> None:
    """A provider that streams text before any usage (no ``message_start`` usage seen) and is
    cut: input is estimated from the request on the wire, 4 bytes a token."""
    api: Api = await make_api(routes=[anthropic_route(fake.url)], env=FAKE_ENV)
    answer = text_events(["Some words ", "of an answer"])
    body = [event for event in answer if event[0] != "message_start"][:4]
    fake.add(Sse(body, hold=True))
    _, run_id = await api.start_run("tell me a long story")
    await wait_for_event(api, run_id, "message.delta")
    await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)

    [usage] = only(await events_of(api, run_id), "run.usage")
    [sent] = fake.requests
    # The estimator's inputs, read back from the wire: system text, messages, tool definitions
    # (less the cache marker the provider adds), each as compact JSON.
    tools = [{k: v for k, v in t.items() if k != "cache_control"} for t in sent["tools"]]
    size = len(sent["system"][0]["text"].encode())
    for part in (sent["messages"], tools):
        size += len(json.dumps(part, separators=(",", ":"), ensure_ascii=False).encode())
    assert usage["estimated"] is True
    assert usage["input_tokens"] == math.ceil(size / 4)
    streamed = "".join(d["content"] for d in only(await events_of(api, run_id), "message.delta"))
    assert usage["output_tokens"] == math.ceil(len(streamed.encode()) / 4)
