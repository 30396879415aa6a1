"""Tools from MCP servers: a server written with the official SDK (``mcp_server.py``), run
over stdio by the service and over streamable HTTP by the test, driven by scripted runs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from runs.config import ConfigError, McpServer
from runs.mcp_servers import McpServers, render_result
from runs.tools import persona_allows
from tests.agent.conftest import MakeApi, events_of, only, write_persona
from tests.conftest import Api

SERVER_SCRIPT = str(Path(__file__).with_name("mcp_server.py"))
SECRET = "mcp-secret-5b9e1f7a3c2d4e6f8a0b"


def stdio_server(name: str, events: Path, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "command": [sys.executable, SERVER_SCRIPT],
        "env": {"MCP_TEST_EVENTS": str(events), "MCP_TEST_SECRET": "${RUNLOG_TEST_MCP_SECRET}"},
        "timeout_seconds": 10,
        **fields,
    }


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    """What the test server's tools record (starts, cancellations, executions)."""
    return tmp_path / "mcp-events.txt"


@pytest.fixture
async def api(make_api: MakeApi, personas_dir: Path, events_file: Path) -> Api:
    """The app with one stdio server, ``test``."""
    write_persona(personas_dir, "mcp", 1, tools=["calculator", "mcp__test__*"])
    write_persona(personas_dir, "picky", 1, tools=["mcp__test__pid", "mcp__test__add"])
    write_persona(
        personas_dir, "careful", 1, tools=["mcp__test__*"], confirm_tools=["mcp__test__*"]
    )
    return await make_api(
        personas_dir=str(personas_dir),
        mcp_servers=[stdio_server("test", events_file)],
        env={"RUNLOG_TEST_MCP_SECRET": SECRET},
    )


async def run_tool(api: Api, directive: str, persona: str = "mcp") -> tuple[dict[str, Any], str]:
    """One ``/tool`` directive run to its end: ``(tool.result, run status)``; the model's
    reply is checked to quote the result, so the model saw it."""
    thread_id, run_id = await api.start_run(directive, persona_id=persona)
    run = await api.wait_for(run_id, timeout=30)
    [result] = only(await events_of(api, run_id), "tool.result")
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert messages[-1]["content"] == f"tool {result['name']} returned: {result['output']}"
    return result, run["status"]


async def lines_of(path: Path, wanted: str, timeout: float = 10.0) -> list[str]:
    """The file's lines once one starts with ``wanted`` (the server writes it from another
    process, so there is nothing to await but the file)."""
    async with asyncio.timeout(timeout):
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            if any(line.startswith(wanted) for line in lines):
                return lines
            await asyncio.sleep(0.02)


# -- calls and results ------------------------------------------------------------------------

TEST_TOOLS = [
    "mcp__test__add",
    "mcp__test__fail",
    "mcp__test__hang",
    "mcp__test__die",
    "mcp__test__pid",
    "mcp__test__leak",
    "mcp__test__secret_digest",
    "mcp__test__once",
]


async def test_mcp_tools_over_stdio(api: Api) -> None:
    """Results, errors, what the model is offered, ``GET /v1/tools``, and the process
    closed at stop (one service start: each starts the server's process)."""
    offered: list[list[str]] = []
    provider = api.runtime.provider_for(api.runtime.routes.resolve(None))
    original = provider.stream

    def recording(request: Any) -> Any:
        offered.append([t.name for t in request.tools])
        return original(request)

    provider.stream = recording  # type: ignore[method-assign]
    result, status = await run_tool(api, '/tool mcp__test__add {"a": 2, "b": 3}')
    assert status == "completed"
    assert (result["name"], result["output"], result["is_error"]) == ("mcp__test__add", "5", False)
    # Both model calls of the run were offered the built-in tool and every tool of "test".
    assert offered == [["calculator", *TEST_TOOLS]] * 2

    # An error the tool raises, and a tool the server does not have: error results.
    result, status = await run_tool(api, '/tool mcp__test__fail {"reason": "no stock"}')
    assert (status, result["is_error"]) == ("completed", True)
    assert result["output"] == "Error executing tool fail: failed on purpose: no stock"
    result, status = await run_tool(api, "/tool mcp__test__nope {}")
    assert (status, result["is_error"]) == ("completed", True)
    assert "unknown tool" in result["output"].lower()

    # A persona that names single tools: the others are refused before reaching the server,
    # as are servers absent from the config.
    offered.clear()
    result, _ = await run_tool(api, "/tool mcp__test__pid {}", persona="picky")
    assert offered[0] == ["mcp__test__pid", "mcp__test__add"]
    pid = int(result["output"])
    for directive in ("/tool mcp__test__die {}", "/tool mcp__nowhere__x {}"):
        result, status = await run_tool(api, directive, persona="picky")
        assert (status, result["is_error"]) == ("completed", True)
        assert result["output"].startswith("unknown tool")

    await check_list_tools(api)
    os.kill(pid, 0)  # the server is alive, and the same process served every call
    await api.client.close()  # stops the app (Runtime.stop) ...
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # ... which stopped the server


@pytest.fixture
async def slow_api(make_api: MakeApi, personas_dir: Path, events_file: Path) -> Api:
    """The app with one stdio server, ``slow``, whose calls time out after 0.5 s."""
    write_persona(personas_dir, "slow", 1, tools=["mcp__slow__hang", "mcp__slow__pid"])
    return await make_api(
        personas_dir=str(personas_dir),
        mcp_servers=[stdio_server("slow", events_file, timeout_seconds=0.5, safe_to_repeat=True)],
        env={"RUNLOG_TEST_MCP_SECRET": SECRET},
    )


async def test_a_timeout_is_an_error_result_and_the_server_restarts(
    slow_api: Api, events_file: Path
) -> None:
    api = slow_api
    result, _ = await run_tool(api, "/tool mcp__slow__pid {}", persona="slow")
    first_pid = int(result["output"])
    started = time.monotonic()
    result, status = await run_tool(api, "/tool mcp__slow__hang {}", persona="slow")
    assert time.monotonic() - started < 5
    assert status == "completed"
    assert result["is_error"] is True
    assert "did not answer within 0.5 s" in result["output"]
    # The SDK told the server to cancel the request it gave up on.
    await lines_of(events_file, "hang cancelled")
    result, status = await run_tool(api, "/tool mcp__slow__pid {}", persona="slow")
    assert (status, result["is_error"]) == ("completed", False)
    assert int(result["output"]) != first_pid  # a fresh process


async def test_a_server_that_exits_mid_call_is_an_error_result_then_restarts(api: Api) -> None:
    result, _ = await run_tool(api, "/tool mcp__test__pid {}")
    dead_pid = int(result["output"])
    result, status = await run_tool(api, "/tool mcp__test__die {}")
    assert status == "completed"
    assert result["is_error"] is True
    assert "closed the connection" in result["output"]
    result, status = await run_tool(api, '/tool mcp__test__add {"a": 2, "b": 3}')
    assert (status, result["output"], result["is_error"]) == ("completed", "5", False)
    result, _ = await run_tool(api, "/tool mcp__test__pid {}")
    assert int(result["output"]) != dead_pid


async def test_a_server_that_cannot_start_is_an_error_result(
    make_api: MakeApi, personas_dir: Path, tmp_path: Path
) -> None:
    write_persona(personas_dir, "broken", 1, tools=["mcp__gone__*", "mcp__nokey__*"])
    write_persona(personas_dir, "stale", 1, tools=["mcp__removed__*"])
    with capture_logs() as logs:
        api = await make_api(
            personas_dir=str(personas_dir),
            mcp_servers=[
                {"name": "gone", "command": [str(tmp_path / "no-such-program")]},
                {
                    "name": "nokey",
                    "command": [sys.executable, SERVER_SCRIPT],
                    "env": {"TOKEN": "${RUNLOG_TEST_UNSET_VARIABLE}"},
                },
            ],
        )
        _, body = await api.request("GET", "/v1/tools?persona_id=broken", expect=200)
    assert body == []  # neither server ever listed tools
    warnings = {(e["event"], e.get("server"), e.get("persona_id")) for e in logs}
    assert {
        ("mcp.unknown_server", None, "stale@1"),
        ("mcp.connection_failed", "gone", None),
        ("mcp.connection_failed", "nokey", None),
    } <= warnings
    result, status = await run_tool(api, "/tool mcp__gone__add {}", persona="broken")
    assert (status, result["is_error"]) == ("completed", True)
    assert "not available" in result["output"]
    result, status = await run_tool(api, "/tool mcp__nokey__add {}", persona="broken")
    assert (status, result["is_error"]) == ("completed", True)
    assert "RUNLOG_TEST_UNSET_VARIABLE" in result["output"]


# -- confirmation and cancel ------------------------------------------------------------------


async def test_confirmation_and_cancel(api: Api, events_file: Path) -> None:
    _, run_id = await api.start_run('/tool mcp__test__add {"a": 2, "b": 3}', persona_id="careful")
    waiting = await api.wait_for(run_id, {"waiting_for_input"})
    assert waiting["status"] == "waiting_for_input"
    [asked] = only(await events_of(api, run_id), "run.waiting_for_input")
    assert (asked["kind"], asked["tool_name"]) == ("confirmation", "mcp__test__add")
    await api.request("POST", f"/v1/runs/{run_id}/input", json={"content": "approve"}, expect=200)
    assert (await api.wait_for(run_id))["status"] == "completed"
    [result] = only(await events_of(api, run_id), "tool.result")
    assert (result["output"], result["is_error"]) == ("5", False)

    _, run_id = await api.start_run("/tool mcp__test__die {}", persona_id="careful")
    await api.wait_for(run_id, {"waiting_for_input"})
    await api.request("POST", f"/v1/runs/{run_id}/input", json={"content": "deny"}, expect=200)
    assert (await api.wait_for(run_id))["status"] == "completed"
    [result] = only(await events_of(api, run_id), "tool.result")
    assert result == {
        "tool_call_id": result["tool_call_id"],
        "name": "mcp__test__die",
        "output": "the user denied this tool call",
        "is_error": True,
    }

    # Cancel aborts a call in flight.
    _, run_id = await api.start_run("/tool mcp__test__hang {}", persona_id="mcp")
    await lines_of(events_file, "hang started")
    started = time.monotonic()
    await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)
    run = await api.wait_for(run_id, timeout=2)
    assert time.monotonic() - started < 2
    assert run["status"] == "cancelled"
    types = [t for t, _ in await events_of(api, run_id)]
    assert "tool.result" not in types
    assert types[-2:] == ["run.cancel_requested", "run.cancelled"]
    await lines_of(events_file, "hang cancelled")  # the server stopped the tool
    result, status = await run_tool(api, '/tool mcp__test__add {"a": 2, "b": 3}')
    assert (status, result["output"]) == ("completed", "5")


# -- secrets ----------------------------------------------------------------------------------


async def test_env_secrets_reach_the_server_and_nothing_else(
    api: Api, db_path: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with capture_logs() as logs:
        result, _ = await run_tool(api, "/tool mcp__test__secret_digest {}")
        assert result["output"] == hashlib.sha256(SECRET.encode()).hexdigest()
        # A server that echoes its secret: the value is struck out before the log.
        result, _ = await run_tool(api, "/tool mcp__test__leak {}")
        assert result["output"] == "the secret is [redacted]"
        result, _ = await run_tool(api, "/tool mcp__test__die {}")
        assert result["is_error"] is True
        _, tools = await api.request("GET", "/v1/tools?persona_id=mcp", expect=200)
    assert SECRET not in json.dumps(tools)
    assert logs and SECRET not in repr(logs)
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT stream, type, data FROM events").fetchall()
    assert rows and not [row for row in rows if SECRET in repr(row)]
    out, err = capfd.readouterr()  # the service's and the servers' own output
    assert SECRET not in out + err


# -- GET /v1/tools ----------------------------------------------------------------------------


async def check_list_tools(api: Api) -> None:
    """``GET /v1/tools`` for the personas of the ``api`` fixture."""
    _, tools = await api.request("GET", "/v1/tools?persona_id=mcp@1", expect=200)
    assert [t["name"] for t in tools] == ["calculator", *TEST_TOOLS]
    calculator, add = tools[0], tools[1]
    assert calculator == {
        "name": "calculator",
        "description": calculator["description"],
        "input_schema": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
        "source": "builtin",
        "mcp_server": None,
        "requires_confirmation": False,
        "safe_to_repeat": True,
    }
    assert {k: v for k, v in add.items() if k != "input_schema"} == {
        "name": "mcp__test__add",
        "description": "Add two integers.",
        "source": "mcp",
        "mcp_server": "test",
        "requires_confirmation": False,
        "safe_to_repeat": False,
    }
    assert add["input_schema"]["required"] == ["a", "b"]

    _, tools = await api.request("GET", "/v1/tools?persona_id=picky", expect=200)
    assert [t["name"] for t in tools] == ["mcp__test__pid", "mcp__test__add"]
    _, tools = await api.request("GET", "/v1/tools?persona_id=careful", expect=200)
    assert [t["name"] for t in tools] == TEST_TOOLS
    assert all(t["requires_confirmation"] for t in tools)
    # No persona: the default one, which has the built-in tools.
    _, tools = await api.request("GET", "/v1/tools", expect=200)
    assert [(t["name"], t["source"]) for t in tools] == [
        ("calculator", "builtin"),
        ("current_time", "builtin"),
        ("ask_user", "builtin"),
    ]
    _, error = await api.request("GET", "/v1/tools?persona_id=nobody", expect=422)
    assert error["code"] == "validation.persona_not_found"
    await api.request("GET", "/v1/tools", key="not-a-key", expect=401)


# -- streamable HTTP --------------------------------------------------------------------------


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    """The test server over streamable HTTP on 127.0.0.1, on a socket the test binds (a free
    port, no race) and hands to the subprocess; stopped after the test."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, SERVER_SCRIPT, "--http-fd", str(listener.fileno())],
        pass_fds=[listener.fileno()],
        env={**os.environ, "MCP_TEST_EVENTS": str(tmp_path / "http-events.txt")},
    )
    listener.close()
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
async def http_api(make_api: MakeApi, personas_dir: Path, http_server: str) -> Api:
    write_persona(personas_dir, "web", 1, tools=["mcp__web__*"])
    return await make_api(
        personas_dir=str(personas_dir),
        mcp_servers=[{"name": "web", "url": http_server, "timeout_seconds": 10}],
    )


async def test_an_mcp_tool_over_streamable_http(http_api: Api) -> None:
    result, status = await run_tool(http_api, '/tool mcp__web__add {"a": 2, "b": 3}', "web")
    assert (status, result["output"], result["is_error"]) == ("completed", "5", False)
    result, status = await run_tool(http_api, "/tool mcp__web__fail {}", "web")
    assert (status, result["output"], result["is_error"]) == (
        "completed",
        "Error executing tool fail: failed on purpose: no reason",
        True,
    )
    # The server process exits mid-call: an error result, and the run goes on.
    result, status = await run_tool(http_api, "/tool mcp__web__die {}", "web")
    assert (status, result["is_error"]) == ("completed", True)


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "Bad-Name", "command": ["x"]}, "name must match"),
        ({"name": "a__b", "command": ["x"]}, "name must match"),
        ({"name": "a_", "command": ["x"]}, "name must match"),
        ({"name": "x" * 33, "command": ["x"]}, "name must match"),
        ({"name": "both", "command": ["x"], "url": "http://127.0.0.1:1/mcp"}, "exactly one"),
        ({"name": "neither"}, "exactly one"),
        ({"name": "empty", "command": []}, "must name a program"),
        ({"name": "ftp", "url": "ftp://127.0.0.1/mcp"}, "http"),
        ({"name": "envurl", "url": "http://127.0.0.1:1/mcp", "env": {"A": "b"}}, "env applies"),
        ({"name": "zero", "command": ["x"], "timeout_seconds": 0}, "timeout_seconds"),
    ],
)
def test_bad_mcp_server_config_is_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        McpServers([McpServer(**fields)], {})


def test_a_server_defined_twice_is_refused() -> None:
    twice = [McpServer(name="a", command=["x"]), McpServer(name="a", command=["y"])]
    with pytest.raises(ConfigError, match="twice"):
        McpServers(twice, {})


@pytest.mark.parametrize(
    ("patterns", "name", "allowed"),
    [
        (["mcp__files__read"], "mcp__files__read", True),
        (["mcp__files__read"], "mcp__files__write", False),
        (["mcp__files__*"], "mcp__files__write", True),
        (["mcp__files__*"], "mcp__other__write", False),
        (["mcp__files__*"], "files__write", False),
        (["mcp__my_files__*"], "mcp__my_files__read_all", True),
        (["calculator"], "calculator", True),
        (["*"], "calculator", False),
        (["mcp__files__*"], "mcp__files__", False),
    ],
)
def test_persona_tool_patterns(patterns: list[str], name: str, allowed: bool) -> None:
    assert persona_allows(patterns, name) is allowed


def test_results_are_rendered_as_text() -> None:
    from mcp import types

    result = types.CallToolResult(
        content=[
            types.TextContent(type="text", text="first"),
            types.ImageContent(type="image", data="AAAA", mime_type="image/png"),
            types.EmbeddedResource(
                type="resource",
                resource=types.TextResourceContents(uri="file:///a.txt", text="inside"),
            ),
        ]
    )
    assert render_result(result) == "first\n[image: image/png]\ninside"
    structured = types.CallToolResult(content=[], structured_content={"sum": 5})
    assert render_result(structured) == '{"sum": 5}'
