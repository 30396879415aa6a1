"""Tools: the calculator (arithmetic without eval), current_time, tool errors and timeouts as
error results the model sees, cancel during a tool, and cache-read usage."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runs.tools import Tool, ToolError, calculate
from tests.agent.conftest import MakeApi, events_of, only, types_of, write_persona
from tests.conftest import Api

# -- the calculator, as a function ------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(2 + 3) * 4", 20),
        ("2 ** 10", 1024),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 % 3", 2),
        ("-(3 - 5)", 2),
        ("sqrt(16) + abs(-2)", 6.0),
        ("round(2.567, 2)", 2.57),
        ("floor(2.5) + ceil(2.5)", 5),
        ("2 * pi", 2 * 3.141592653589793),
        ("1.5e3", 1500.0),
        ("2 ** -1", 0.5),
    ],
)
def test_calculator_evaluates_arithmetic(expression: str, value: float) -> None:
    assert calculate(expression) == pytest.approx(value)


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('touch /tmp/pwned')",
        "().__class__.__bases__[0].__subclasses__()",
        "open('/etc/passwd')",
        "eval('1+1')",
        "exec",
        "x + 1",
        "sqrt.__globals__",
        "(lambda: 1)()",
        "[1, 2][0]",
        "'a' * 3",
        "True + 1",
        "1 if 2 else 3",
        "1 < 2",
        "sqrt(x=4)",
        "1 << 5",
        "{1: 2}",
        "f'{1}'",
    ],
)
def test_calculator_refuses_anything_but_arithmetic(expression: str) -> None:
    with pytest.raises(ToolError):
        calculate(expression)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("2 ** 100000", "exponent too large"),
        ("(10 ** 10000) ** 10000", "too large"),
        ("(9 ** 9999) * (9 ** 9999)", "too large"),
        ("sqrt(-1)", "math domain error"),
        ("exp(100000)", "range"),
        ("1 +", "not an arithmetic expression"),
        ("1" * 1001, "too long"),
    ],
)
def test_calculator_errors_are_tool_errors_and_fast(expression: str, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match=message):
        calculate(expression)
    assert time.monotonic() - started < 0.5  # never holds the event loop


# -- tools in runs ----------------------------------------------------------------------------


async def _explode(arguments: dict[str, Any]) -> str:
    raise RuntimeError("internal detail the model should not see")


async def _refuse(arguments: dict[str, Any]) -> str:
    raise ToolError("the widget is out of stock")


async def _sleep(arguments: dict[str, Any]) -> str:
    await asyncio.sleep(30)
    return "woke"


class Gate:
    """A tool that signals when it starts, then blocks until cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def run(self, arguments: dict[str, Any]) -> str:
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "never"


def tool(name: str, run: Any, timeout_s: float = 5.0) -> Tool:
    return Tool(
        name=name,
        description=f"test tool {name}",
        input_schema={"type": "object", "properties": {}},
        run=run,
        timeout_s=timeout_s,
    )


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
async def api(make_api: MakeApi, personas_dir: Path, gate: Gate) -> Api:
    names = ["calculator", "current_time", "explode", "refuse", "sleepy", "gate"]
    write_persona(personas_dir, "toolbox", 1, tools=names)
    return await make_api(
        personas_dir=str(personas_dir),
        tools=[
            tool("explode", _explode),
            tool("refuse", _refuse),
            tool("sleepy", _sleep, timeout_s=0.05),
            tool("gate", gate.run, timeout_s=30),
        ],
    )


async def run_tool(api: Api, directive: str, **body: Any) -> tuple[dict[str, Any], str, str]:
    """Run one ``/tool`` directive to its end: ``(tool.result, status, assistant reply)``."""
    thread_id, run_id = await api.start_run(directive, **body)
    run = await api.wait_for(run_id)
    events = await events_of(api, run_id)
    [call] = only(events, "tool.call")
    [result] = only(events, "tool.result")
    assert call["tool_call_id"] == result["tool_call_id"]
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    reply = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
    return result, run["status"], reply


async def test_calculator_error_is_an_error_result_and_the_model_goes_on(api: Api) -> None:
    result, status, reply = await run_tool(
        api, """/tool calculator {"expression": "__import__('os').getcwd()"}"""
    )
    assert result["is_error"] is True
    assert "unsupported" in result["output"]
    assert status == "completed"
    assert reply == f"tool calculator returned: {result['output']}"

    result, status, _ = await run_tool(api, '/tool calculator {"expression": "1/0"}')
    assert (result["output"], result["is_error"], status) == ("division by zero", True, "completed")
    result, status, _ = await run_tool(api, "/tool calculator {}")
    assert result["is_error"] is True
    assert "expression" in result["output"]


async def test_current_time(api: Api) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    result, status, reply = await run_tool(api, "/tool current_time {}")
    after = datetime.now(UTC)
    assert status == "completed"
    assert result["is_error"] is False
    assert result["output"].endswith("Z")
    stamp = datetime.fromisoformat(result["output"].replace("Z", "+00:00"))
    assert before <= stamp <= after
    assert reply == f"tool current_time returned: {result['output']}"


async def test_a_tool_that_raises_gives_an_error_result(api: Api) -> None:
    result, status, reply = await run_tool(api, "/tool explode {}", persona_id="toolbox")
    assert status == "completed"
    assert result["is_error"] is True
    assert result["output"] == "the tool failed: RuntimeError"
    assert "internal detail" not in reply

    result, status, _ = await run_tool(api, "/tool refuse {}", persona_id="toolbox")
    assert (result["output"], result["is_error"], status) == (
        "the widget is out of stock",
        True,
        "completed",
    )


async def test_a_tool_that_times_out_gives_an_error_result(api: Api) -> None:
    started = time.monotonic()
    result, status, reply = await run_tool(api, "/tool sleepy {}", persona_id="toolbox")
    assert time.monotonic() - started < 3
    assert status == "completed"
    assert result["is_error"] is True
    assert "timed out" in result["output"]
    assert reply == f"tool sleepy returned: {result['output']}"


async def test_a_tool_the_persona_does_not_list_is_refused(api: Api) -> None:
    # The default persona sees only the built-in tools; the call never reaches the tool.
    result, status, _ = await run_tool(api, "/tool explode {}")
    assert status == "completed"
    assert result["is_error"] is True
    assert "unknown tool" in result["output"]


async def test_cancel_during_a_tool(api: Api, gate: Gate) -> None:
    _, run_id = await api.start_run("/tool gate {}", persona_id="toolbox")
    await asyncio.wait_for(gate.started.wait(), 5)
    started = time.monotonic()
    await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)
    run = await api.wait_for(run_id, timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert run["status"] == "cancelled"
    assert gate.cancelled.is_set()  # the tool itself was stopped
    events = await events_of(api, run_id)
    assert "tool.result" not in types_of(events)
    assert types_of(events)[-2:] == ["run.cancel_requested", "run.cancelled"]
    assert run_id not in api.runtime.supervisor.tasks


async def test_cache_directive_reports_cache_read_tokens(api: Api) -> None:
    _, run_id = await api.start_run("/cache 7\nhello there")
    run = await api.wait_for(run_id)
    assert run["status"] == "completed"
    [usage] = only(await events_of(api, run_id), "run.usage")
    assert usage["cache_read_tokens"] == 7
    assert usage["cache_write_tokens"] == 0
    expected = 7 / (usage["input_tokens"] + 7)
    assert run["cache_hit_rate"] == pytest.approx(expected)
