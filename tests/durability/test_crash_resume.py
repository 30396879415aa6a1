"""kill -9 the real server while runs stream, call tools and wait for input; restart it on the
same file; every run continues from its log."""

from __future__ import annotations

import asyncio
import json
import math
import random
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.durability.server_process import Client, ServerProcess

LONG = " ".join(f"word{i}" for i in range(40))


def _log(db: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT position, stream, seq, type, data FROM events ORDER BY position"
        ).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_runs_survive_sigkill_and_resume_from_the_log(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    server = ServerProcess(tmp_path)
    await server.start()
    seen: dict[str, list[dict[str, Any]]] = {}
    async with aiohttp.ClientSession() as session:
        client = Client(session, server.url)
        runs: dict[str, str] = {}
        for _ in range(3):
            runs[await client.start_run(f"/slow 25\n{LONG}")] = "stream"
        for i in range(3):
            run_id = await client.start_run(
                f'/tool counter {{"marker": "m{i}", "seconds": 0.4}}', persona_id="durable@1"
            )
            runs[run_id] = "tool"
        for _ in range(2):
            runs[await client.start_run("/ask what colour?", persona_id="durable@1")] = "ask"
        readers = []
        for run_id, kind in runs.items():
            if kind == "stream":
                seen[run_id] = []
                readers.append(asyncio.create_task(client.read_sse(run_id, seen[run_id])))
        await asyncio.sleep(rng.uniform(0.15, 0.7))
        server.kill()
        await asyncio.gather(*readers)

        await server.start()  # same file: resumes every run that was not terminal
        statuses = {run_id: await client.settle(run_id) for run_id in runs}
        for run_id, status in statuses.items():
            if status == "waiting_for_input":
                code, body = await client.call(
                    "POST", f"/v1/runs/{run_id}/input", {"content": "blue"}
                )
                assert code == 200, body
                statuses[run_id] = await client.settle(run_id)
        assert set(statuses.values()) == {"completed"}, statuses

        _, messages_ok = await client.call("GET", "/v1/runs?limit=200")
        assert {r["run_id"] for r in messages_ok} >= set(runs)
    assert server.terminate() == 0

    events = _log(server.db)
    by_stream: dict[str, list[tuple[Any, ...]]] = {}
    for event in events:
        by_stream.setdefault(event[1], []).append(event)
    resumed = 0
    for run_id, kind in runs.items():
        stream = by_stream[f"run-{run_id}"]
        assert [e[2] for e in stream] == list(range(1, len(stream) + 1))
        types = [e[3] for e in stream]
        assert types[0] == "run.started" and types[-1] == "run.completed"
        resumed += types.count("run.resumed")
        for index, event in enumerate(stream):
            if event[3] == "run.resumed":
                assert json.loads(event[4])["from_seq"] == stream[index - 1][2]
        calls = Counter(json.loads(e[4])["tool_call_id"] for e in stream if e[3] == "tool.call")
        results = Counter(json.loads(e[4])["tool_call_id"] for e in stream if e[3] == "tool.result")
        assert calls == results, (kind, types)
        if kind == "ask":
            assert "run.input_provided" in types
    assert resumed > 0, "the kill landed after every run had finished: nothing was tested"

    # Nothing a client saw is lost: every frame received before the crash is in the log.
    for run_id, frames in seen.items():
        stream = {e[2]: e for e in by_stream[f"run-{run_id}"]}
        for frame in frames:
            assert stream[frame["seq"]][3] == frame["type"]
            logged = json.loads(stream[frame["seq"]][4])
            if frame["type"] == "message.delta":  # the stream adds the text as content_delta
                logged["content_delta"] = logged["content"]
            assert logged == frame["data"]

    # No tool with a recorded result ran twice (a call cut by the crash is not repeated).
    executions = Counter(Path(server.count_file).read_text().split())
    assert executions and max(executions.values()) == 1, executions

    verify = server.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    check = server.cli("rebuild", "--check")
    assert check.returncode == 0, check.stdout + check.stderr


async def test_a_tool_cut_by_a_crash_is_not_repeated_and_the_model_is_told(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path)
    await server.start()
    async with aiohttp.ClientSession() as session:
        client = Client(session, server.url)
        run_id = await client.start_run(
            '/tool counter {"marker": "once", "seconds": 30}', persona_id="durable@1"
        )
        count_file = Path(server.count_file)
        async with asyncio.timeout(20):
            while not (count_file.exists() and count_file.read_text()):
                await asyncio.sleep(0.02)  # the tool is running in the other process
        server.kill()
        await server.start()
        assert await client.settle(run_id) == "completed"
    assert server.terminate() == 0
    stream = [e for e in _log(server.db) if e[1] == f"run-{run_id}"]
    types = [e[3] for e in stream]
    assert types.count("tool.call") == 1 and types.count("tool.result") == 1
    assert types.index("run.resumed") < types.index("tool.result")
    result = json.loads(next(e[4] for e in stream if e[3] == "tool.result"))
    assert result["is_error"] is True and "interrupted" in result["output"]
    assert count_file.read_text().split() == ["once"]


async def test_a_model_call_cut_by_a_crash_is_issued_again_and_its_output_replaced(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path)
    await server.start()
    async with aiohttp.ClientSession() as session:
        client = Client(session, server.url)
        run_id = await client.start_run(f"/slow 40\n{LONG}")
        frames: list[dict[str, Any]] = []
        reader = asyncio.create_task(client.read_sse(run_id, frames))
        async with asyncio.timeout(20):
            while sum(f["type"] == "message.delta" for f in frames) < 3:
                await asyncio.sleep(0.02)
        server.kill()
        await reader
        await server.start()
        assert await client.settle(run_id) == "completed"
        _, run = await client.call("GET", f"/v1/runs/{run_id}")
        status, messages = await client.call("GET", f"/v1/threads/{run['thread_id']}/messages")
        assert status == 200
    assert server.terminate() == 0
    stream = [(e[3], json.loads(e[4])) for e in _log(server.db) if e[1] == f"run-{run_id}"]
    retried = [d for t, d in stream if t == "run.retried"]
    assert len(retried) == 1 and retried[0]["reason"] == "interrupted by a restart"
    discarded, call = retried[0]["discarded_call"], retried[0]["call"]
    kept = "".join(d["content"] for t, d in stream if t == "message.delta" and d["call"] == call)
    assert messages[-1]["content"] == kept == f"echo: {LONG}"
    assert any(t == "message.delta" and d["call"] == discarded for t, d in stream)
    # The cut call's usage died with the process: it is estimated, announced with the retry,
    # output from what it had streamed (4 bytes a token, rounded up), and counted once.
    deltas = [d for t, d in stream if t == "message.delta"]
    cut = "".join(d["content"] for d in deltas if d["call"] == discarded)
    usages = [d for t, d in stream if t == "run.usage"]
    [estimate] = [u for u in usages if u["estimated"]]
    assert estimate["call"] == discarded
    assert estimate["output_tokens"] == math.ceil(len(cut.encode()) / 4)
    assert estimate["input_tokens"] >= math.ceil(len(LONG) / 4)
    types = [t for t, _ in stream]
    assert stream[types.index("run.retried") - 1] == ("run.usage", estimate)
    assert run["usage_estimated"] is True
    assert run["total_input_tokens"] == sum(u["input_tokens"] for u in usages)
    assert run["total_output_tokens"] == sum(u["output_tokens"] for u in usages)
