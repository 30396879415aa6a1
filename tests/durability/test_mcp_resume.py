"""kill -9 the real server while MCP tool calls are in flight; after the restart each call
follows its server's ``safe_to_repeat``. The server's env secret stays out of the log and
out of the service's output."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.durability.server_process import Client, ServerProcess

MCP_SERVER = Path(__file__).resolve().parents[1] / "agent" / "mcp_server.py"
SECRET = "durable-mcp-secret-0f1e2d3c4b5a6978"


def _server_table(name: str, events: Path, safe: bool) -> str:
    return (
        f"\n[[mcp_servers]]\nname = {json.dumps(name)}\n"
        f"command = {json.dumps([sys.executable, str(MCP_SERVER)])}\n"
        f"env = {{ MCP_TEST_EVENTS = {json.dumps(str(events))},"
        ' MCP_TEST_SECRET = "${RUNLOG_TEST_MCP_SECRET}" }\n'
        f"safe_to_repeat = {'true' if safe else 'false'}\n"
    )


async def _lines_starting(path: Path, prefixes: list[str]) -> list[str]:
    """The file's lines once each prefix starts one (written by the MCP servers)."""
    async with asyncio.timeout(30):
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            if all(any(line.startswith(p) for line in lines) for p in prefixes):
                return lines
            await asyncio.sleep(0.05)


async def test_mcp_calls_cut_by_a_crash_follow_safe_to_repeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNLOG_TEST_MCP_SECRET", SECRET)
    events = tmp_path / "mcp-events.txt"
    server = ServerProcess(
        tmp_path, _server_table("once", events, False) + _server_table("again", events, True)
    )
    (tmp_path / "personas" / "mcpdurable@1.toml").write_text(
        'key = "mcpdurable"\nversion = 1\nsystem_prompt = "test"\n'
        'tools = ["mcp__once__*", "mcp__again__*"]\n'
    )
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, server.url)
            cut = await client.start_run(
                '/tool mcp__once__once {"marker": "a"}', persona_id="mcpdurable"
            )
            repeated = await client.start_run(
                '/tool mcp__again__once {"marker": "b"}', persona_id="mcpdurable"
            )
            # Both calls are running in their servers (each sleeps on a first execution).
            await _lines_starting(events, ["once a ", "once b "])
            server.kill()
            await server.start()
            assert await client.settle(cut) == "completed"
            assert await client.settle(repeated) == "completed"
        assert server.terminate() == 0
    finally:
        # The servers the killed service had started are orphans stuck in their calls.
        lines = events.read_text().splitlines() if events.exists() else []
        for line in lines:
            with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
                os.kill(int(line.split()[2]), signal.SIGKILL)

    executions = [line.rsplit(" ", 1)[0] for line in lines]
    assert executions.count("once a") == 1  # not safe to repeat: not run again
    assert executions.count("once b") == 2  # safe to repeat: run again after the restart
    with sqlite3.connect(server.db) as db:
        rows = db.execute("SELECT stream, type, data FROM events ORDER BY position").fetchall()
    results = {stream: json.loads(data) for stream, kind, data in rows if kind == "tool.result"}
    assert results[f"run-{cut}"]["is_error"] is True
    assert "interrupted" in results[f"run-{cut}"]["output"]
    assert results[f"run-{repeated}"] == {
        "tool_call_id": results[f"run-{repeated}"]["tool_call_id"],
        "name": "mcp__again__once",
        "output": "done b",
        "is_error": False,
    }
    assert not [row for row in rows if SECRET in repr(row)]
    assert SECRET not in server.log.read_text()  # the service's stdout and stderr
