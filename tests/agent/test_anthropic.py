"""The Anthropic provider through the real ``anthropic`` SDK, against the fake Messages API."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from runs.personas import PersonaRegistry
from runs.providers.anthropic import _SENDS_TEMPERATURE
from tests.agent.conftest import (
    FAKE_ENV,
    FAKE_KEY,
    PRICES,
    MakeApi,
    anthropic_route,
    events_of,
    only,
    types_of,
    wait_for_event,
    write_persona,
)
from tests.agent.fake_anthropic import (
    FakeAnthropic,
    HttpError,
    Sse,
    error_event,
    message_start,
    text_events,
    tool_events,
)
from tests.conftest import Api


def cost(input_tokens: int, output_tokens: int, cache_write: int = 0, cache_read: int = 0) -> float:
    return (
        input_tokens * PRICES["input_usd_per_mtok"]
        + output_tokens * PRICES["output_usd_per_mtok"]
        + cache_write * PRICES["cache_write_usd_per_mtok"]
        + cache_read * PRICES["cache_read_usd_per_mtok"]
    ) / 1_000_000


def sent_key(headers: dict[str, str]) -> str | None:
    """The API key a request carried (SDK 2.x: ``Authorization: Bearer``; before: x-api-key)."""
    bearer = headers.get("Authorization", "")
    return bearer.removeprefix("Bearer ") if bearer else headers.get("X-Api-Key")


async def assistant_messages(api: Api, thread_id: str) -> list[str]:
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    return [m["content"] for m in messages if m["role"] == "assistant"]


async def test_plain_text_streams_deltas_and_accounts_usage(
    anthropic_api: Api, fake: FakeAnthropic
) -> None:
    api = anthropic_api
    fake.add(Sse(text_events(["Hel", "lo ", "world"], input_tokens=100, output_tokens=20)))
    thread_id, run_id = await api.start_run("hi there")
    run = await api.wait_for(run_id)
    assert run["status"] == "completed", run

    events = await events_of(api, run_id)
    started = only(events, "run.started")[0]
    assert (started["route_id"], started["provider"], started["model"]) == (
        "fake",
        "anthropic",
        "claude-test",
    )
    deltas = only(events, "message.delta")
    assert "".join(d["content"] for d in deltas) == "Hello world"
    assert {d["call"] for d in deltas} == {1}
    [usage] = only(events, "run.usage")
    assert (usage["input_tokens"], usage["output_tokens"]) == (100, 20)
    assert usage["model"] == "claude-test"
    assert usage["cost_usd"] == pytest.approx(cost(100, 20))
    assert types_of(events)[-1] == "run.completed"

    assert run["total_input_tokens"] == 100
    assert run["total_output_tokens"] == 20
    assert run["total_cost_usd"] == pytest.approx(cost(100, 20))
    assert run["credits_used"] == math.ceil(cost(100, 20) * 1000 * 2.0) == 2
    assert run["cache_hit_rate"] == 0.0
    assert run["model"] == "claude-test"
    assert run["completed_at"] is not None
    assert run["duration_ms"] is not None
    assert run["duration_ms"] >= 0
    assert await assistant_messages(api, thread_id) == ["Hello world"]

    # What the SDK sent: key from the route's variable, system prompt and tools cached.
    [body] = fake.requests
    assert sent_key(fake.headers[0]) == FAKE_KEY
    default = PersonaRegistry.from_dirs(None).resolve(None)
    assert body["model"] == "claude-test"
    assert body["stream"] is True
    assert body["max_tokens"] == default.max_output_tokens
    # SDK 2.x (API version 2026-10-21) has no sampling parameters; older SDKs send it.
    if _SENDS_TEMPERATURE:
        assert body["temperature"] == default.temperature
    else:
        assert "temperature" not in body
    assert body["system"] == [
        {
            "type": "text",
            "text": default.system_prompt,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    assert [t["name"] for t in body["tools"]] == ["calculator", "current_time", "ask_user"]
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert all("input_schema" in t for t in body["tools"])
    assert body["messages"] == [{"role": "user", "content": "hi there"}]


async def test_tool_loop_over_two_model_calls(anthropic_api: Api, fake: FakeAnthropic) -> None:
    api = anthropic_api
    fake.add(
        Sse(
            tool_events(
                "toolu_01",
                "calculator",
                ['{"expr', 'ession": "', "6*", '7"}'],
                text="Let me compute. ",
                input_tokens=50,
                output_tokens=12,
            )
        ),
        Sse(text_events(["The answer ", "is 42."], input_tokens=80, output_tokens=6)),
    )
    thread_id, run_id = await api.start_run("what is 6*7?")
    run = await api.wait_for(run_id)
    assert run["status"] == "completed", run

    events = await events_of(api, run_id)
    [call] = only(events, "tool.call")
    [result] = only(events, "tool.result")
    assert call["tool_call_id"] == result["tool_call_id"] == "toolu_01"
    assert call["name"] == result["name"] == "calculator"
    assert call["arguments"] == {"expression": "6*7"}
    assert (result["output"], result["is_error"]) == ("42", False)
    kinds = types_of(events)
    assert kinds.index("tool.call") < kinds.index("tool.result") < kinds.index("run.completed")
    assert [u["call"] for u in only(events, "run.usage")] == [1, 2]
    assert run["total_input_tokens"] == 130
    assert run["total_output_tokens"] == 18

    assert len(fake.requests) == 2
    second = fake.requests[1]["messages"]
    assert second == [
        {"role": "user", "content": "what is 6*7?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me compute. "},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "calculator",
                    "input": {"expression": "6*7"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01",
                    "content": "42",
                    "is_error": False,
                }
            ],
        },
    ]
    [answer] = await assistant_messages(api, thread_id)
    assert answer.endswith("The answer is 42.")


async def test_cache_usage_gives_cache_hit_rate(anthropic_api: Api, fake: FakeAnthropic) -> None:
    api = anthropic_api
    fake.add(
        Sse(
            text_events(
                ["cached"], input_tokens=100, cache_read=300, cache_write=100, output_tokens=4
            )
        )
    )
    _, run_id = await api.start_run("again")
    run = await api.wait_for(run_id)
    assert run["status"] == "completed"
    [usage] = only(await events_of(api, run_id), "run.usage")
    assert (usage["cache_read_tokens"], usage["cache_write_tokens"]) == (300, 100)
    assert run["cache_hit_rate"] == pytest.approx(300 / (100 + 300 + 100))
    assert run["total_cost_usd"] == pytest.approx(cost(100, 4, 100, 300))


async def test_rate_limit_then_success_is_retried_with_reason(
    anthropic_api: Api, fake: FakeAnthropic
) -> None:
    api = anthropic_api
    fake.add(
        HttpError(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            headers={"retry-after": "0"},
        ),
        Sse(text_events(["fine now"])),
    )
    thread_id, run_id = await api.start_run("hello")
    run = await api.wait_for(run_id)
    assert run["status"] == "completed", run
    events = await events_of(api, run_id)
    [retried] = only(events, "run.retried")
    assert retried["reason"].startswith("provider.rate_limited")
    assert "per-minute rate limit" in retried["reason"]
    assert (retried["call"], retried["discarded_call"], retried["attempt"]) == (2, 1, 2)
    assert retried["delay_ms"] == 10
    assert {d["call"] for d in only(events, "message.delta")} == {2}
    assert len(fake.requests) == 2
    assert fake.requests[0] == fake.requests[1]
    assert await assistant_messages(api, thread_id) == ["fine now"]


async def test_server_errors_until_max_attempts_fail_the_run(
    anthropic_api: Api, fake: FakeAnthropic
) -> None:
    api = anthropic_api
    fake.add(
        HttpError(500, "api_error", "Internal server error"),
        HttpError(529, "overloaded_error", "Overloaded"),
        HttpError(503, "api_error", "Service unavailable, try later"),
        Sse(text_events(["never sent"])),
    )
    _, run_id = await api.start_run("hello")
    run = await api.wait_for(run_id)
    assert run["status"] == "failed"
    assert run["error_class"] == "provider.server_error"
    assert run["error_message"] == "Service unavailable, try later"
    assert run["failed_at"] is not None
    events = await events_of(api, run_id)
    retried = only(events, "run.retried")
    assert [r["attempt"] for r in retried] == [2, 3]
    assert retried[0]["reason"].startswith("provider.server_error")
    assert retried[1]["reason"].startswith("provider.overloaded")
    assert [r["delay_ms"] for r in retried] == [10, 20]  # exponential backoff
    assert len(fake.requests) == 3  # max_attempts = 3
    assert len(fake.script) == 1
    assert types_of(events)[-1] == "run.failed"


async def test_error_event_inside_the_stream_is_retried(
    anthropic_api: Api, fake: FakeAnthropic
) -> None:
    api = anthropic_api
    fake.add(
        Sse([message_start(), ("ping", {"type": "ping"}), error_event("overloaded_error", "Busy")]),
        Sse(text_events(["ok"])),
    )
    _, run_id = await api.start_run("hello")
    run = await api.wait_for(run_id)
    assert run["status"] == "completed", run
    [retried] = only(await events_of(api, run_id), "run.retried")
    assert retried["reason"] == "provider.overloaded: Busy"


async def test_auth_error_fails_with_providers_message_and_never_the_key(
    anthropic_api: Api, fake: FakeAnthropic, db_path: str
) -> None:
    api = anthropic_api
    fake.add(HttpError(401, "authentication_error", "invalid x-api-key"))
    with capture_logs() as logs:
        _, run_id = await api.start_run("hello")
        run = await api.wait_for(run_id)
    assert run["status"] == "failed"
    assert run["error_class"] == "provider.auth"
    assert run["error_message"] == "invalid x-api-key"
    assert len(fake.requests) == 1  # not retried
    assert sent_key(fake.headers[0]) == FAKE_KEY  # the key did reach the provider
    assert "run.retried" not in types_of(await events_of(api, run_id))

    # Nowhere in the log: every row of the events table, then the raw database files.
    everything = await api.runtime.store.read_all(0, 100_000)
    assert everything
    assert not [e for e in everything if FAKE_KEY in e.data or FAKE_KEY in e.type]
    for path in Path(db_path).parent.glob(Path(db_path).name + "*"):
        assert FAKE_KEY.encode() not in path.read_bytes(), path
    assert FAKE_KEY not in repr(logs)


async def test_connection_cut_mid_stream_is_retried_and_partial_output_replaced(
    anthropic_api: Api, fake: FakeAnthropic
) -> None:
    api = anthropic_api
    partial = text_events(["Partial ", "answ"], input_tokens=30)
    # message_start, ping, content_block_start, two deltas: then the connection drops.
    fake.add(Sse(partial, cut_after=5), Sse(text_events(["Full answer."], input_tokens=30)))
    thread_id, run_id = await api.start_run("hello")
    run = await api.wait_for(run_id)
    assert run["status"] == "completed", run
    assert fake.completed == [1]

    events = await events_of(api, run_id)
    deltas = only(events, "message.delta")
    assert "".join(d["content"] for d in deltas if d["call"] == 1) == "Partial answ"
    assert "".join(d["content"] for d in deltas if d["call"] == 2) == "Full answer."
    [retried] = only(events, "run.retried")
    assert retried["discarded_call"] == 1
    assert retried["call"] == 2
    assert retried["reason"].startswith("provider.connection")
    kinds = types_of(events)
    # The retry is announced after the partial output and before the replacement.
    first_partial = kinds.index("message.delta")
    assert first_partial < kinds.index("run.retried")
    assert all(
        d["call"] == 2 for t, d in events[kinds.index("run.retried") :] if t == "message.delta"
    )
    assert await assistant_messages(api, thread_id) == ["Full answer."]
    # The cut attempt's input tokens are billed too (reported by its message_start).
    usages = only(events, "run.usage")
    assert [(u["call"], u["input_tokens"]) for u in usages] == [(1, 30), (2, 30)]
    # The cut attempt never reported its output: that part is estimated ("Partial answ", 12
    # bytes: 3 tokens), and the run says its totals include an estimate.
    assert (usages[0]["estimated"], usages[0]["output_tokens"]) == (True, 3)
    assert usages[1]["estimated"] is False
    assert run["usage_estimated"] is True
    assert run["total_output_tokens"] == 3 + usages[1]["output_tokens"]
    assert kinds.index("run.usage") < kinds.index("run.retried")
    assert run["total_input_tokens"] == 60


async def test_cancel_mid_stream_aborts_the_request_and_records_usage(
    anthropic_api: Api, fake: FakeAnthropic
) -> None:
    api = anthropic_api
    fake.add(
        Sse(
            [
                message_start(input_tokens=120, output_tokens=1),
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": "thinking"},
                    },
                ),
            ],
            delay_s=0.02,
            hold=True,
        )
    )
    _, run_id = await api.start_run("a long answer please")
    await wait_for_event(api, run_id, "message.delta")
    assert not fake.aborted

    started = time.monotonic()
    await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)
    run = await api.wait_for(run_id, timeout=1.0)
    assert run["status"] == "cancelled"
    assert time.monotonic() - started < 1.0
    await asyncio.wait_for(fake.abort_seen.wait(), 1.0)
    assert fake.aborted == [0]
    assert fake.completed == []

    events = await events_of(api, run_id)
    kinds = types_of(events)
    assert kinds[-3:] == ["run.usage", "run.cancel_requested", "run.cancelled"]
    [usage] = only(events, "run.usage")
    # The call was cut before the provider's final usage: input as message_start reported
    # it, output estimated from the 8 bytes streamed ("thinking": 8 / 4 = 2 tokens, more than
    # the 1 message_start reported), and the event says so.
    assert (usage["input_tokens"], usage["output_tokens"]) == (120, 2)
    assert usage["estimated"] is True
    assert usage["cost_usd"] == pytest.approx(cost(120, 2))
    assert (run["total_input_tokens"], run["total_output_tokens"]) == (120, 2)
    assert run["usage_estimated"] is True
    assert run["cancelled_at"] is not None
    assert run_id not in api.runtime.supervisor.tasks


async def test_bad_request_fails_without_retry(anthropic_api: Api, fake: FakeAnthropic) -> None:
    api = anthropic_api
    fake.add(HttpError(400, "invalid_request_error", "messages: roles must alternate"))
    _, run_id = await api.start_run("hello")
    run = await api.wait_for(run_id)
    assert (run["status"], run["error_class"]) == ("failed", "provider.bad_request")
    assert run["error_message"] == "messages: roles must alternate"
    assert len(fake.requests) == 1
    assert "run.retried" not in types_of(await events_of(api, run_id))


async def test_denied_tool_result_reaches_the_model(
    make_api: MakeApi, personas_dir: Path, fake: FakeAnthropic
) -> None:
    write_persona(personas_dir, "guarded", 1, tools=["calculator"], confirm_tools=["calculator"])
    api = await make_api(
        personas_dir=str(personas_dir), routes=[anthropic_route(fake.url)], env=FAKE_ENV
    )
    fake.add(
        Sse(tool_events("toolu_09", "calculator", ['{"expression":', ' "2+2"}'])),
        Sse(text_events(["Understood, I will not calculate."])),
    )
    thread_id, run_id = await api.start_run("add 2 and 2", persona_id="guarded")
    run = await api.wait_for(run_id, {"waiting_for_input"})
    [waiting] = only(await events_of(api, run_id), "run.waiting_for_input")
    assert (waiting["kind"], waiting["tool_name"], waiting["arguments"]) == (
        "confirmation",
        "calculator",
        {"expression": "2+2"},
    )
    assert len(fake.requests) == 1  # nothing is sent while the run waits
    await api.request("POST", f"/v1/runs/{run_id}/input", json={"content": "deny"}, expect=200)
    run = await api.wait_for(run_id)
    assert run["status"] == "completed"
    [tool_result] = fake.requests[1]["messages"][-1]["content"]
    assert tool_result["type"] == "tool_result"
    assert tool_result["tool_use_id"] == "toolu_09"
    assert tool_result["is_error"] is True
    assert "denied" in tool_result["content"]
    assert await assistant_messages(api, thread_id) == ["Understood, I will not calculate."]


async def test_retry_after_from_the_provider_is_honoured(
    anthropic_api: Api, fake: FakeAnthropic
) -> None:
    api = anthropic_api
    fake.add(
        HttpError(529, "overloaded_error", "Overloaded", headers={"retry-after": "0.3"}),
        Sse(text_events(["after a pause"])),
    )
    _, run_id = await api.start_run("hello")
    assert (await api.wait_for(run_id))["status"] == "completed"
    [retried] = only(await events_of(api, run_id), "run.retried")
    assert retried["reason"].startswith("provider.overloaded")
    assert retried["delay_ms"] == 300  # the provider's 0.3 s, longer than our 10 ms backoff
