"""Two real ``runlog serve`` processes on one PostgreSQL database: each run has exactly one
driver (its lease), a process that dies or stops hands its runs over, and the limits hold
across the processes."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.durability.server_process import Client, ServerProcess
from tests.multiproc.conftest import Servers

LEASE_SECONDS = 2
LONG = " ".join(f"word{i}" for i in range(60))
TERMINAL = {"run.completed", "run.failed", "run.cancelled"}


class Pair:
    """Servers A and B on one log, and an HTTP client for each."""

    def __init__(self, a: ServerProcess, b: ServerProcess, session: aiohttp.ClientSession) -> None:
        self.a, self.b = a, b
        self.on_a = Client(session, a.url)
        self.on_b = Client(session, b.url)
        self.url = a.db

    def events(self, stream_prefix: str = "run-") -> list[tuple[str, int, str, dict[str, Any]]]:
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "SELECT stream, seq, type, data FROM events WHERE stream LIKE %s ORDER BY position",
                (stream_prefix + "%",),
            ).fetchall()
        return [(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    def run_events(self, run_id: str) -> list[tuple[str, dict[str, Any]]]:
        return [(t, d) for s, _, t, d in self.events(f"run-{run_id}")]


@pytest.fixture
async def pair_factory(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Awaitable[Pair]]]:
    sessions: list[aiohttp.ClientSession] = []

    async def make(*, max_live: int | None = None, login_failures: int = 5) -> Pair:
        if max_live is not None:  # the test servers' config file sets its own
            monkeypatch.setenv("RUNLOG_MAX_LIVE_RUNS", str(max_live))
        a, b = await servers.pair(
            f"lease_seconds = {LEASE_SECONDS}\nlogin_max_failures = {login_failures}\n"
        )
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Pair(a, b, session)

    yield make
    for session in sessions:
        await session.close()


async def _thread_with_message(client: Client, content: str) -> str:
    status, thread = await client.call("POST", "/v1/threads", {"title": "multiproc"})
    assert status == 201, thread
    status, body = await client.call(
        "POST", f"/v1/threads/{thread['id']}/messages", {"content": content}
    )
    assert status == 201, body
    return str(thread["id"])


async def _wait_status(client: Client, run_id: str, wanted: set[str], timeout: float) -> str:
    async with asyncio.timeout(timeout):
        while True:
            status, run = await client.call("GET", f"/v1/runs/{run_id}")
            assert status == 200, run
            if run["status"] in wanted:
                return str(run["status"])
            await asyncio.sleep(0.05)


async def test_one_live_run_per_thread_across_processes(pair_factory: Any) -> None:
    pair: Pair = await pair_factory()
    thread_id = await _thread_with_message(pair.on_a, f"/slow 100\n{LONG}")
    clients = [pair.on_a, pair.on_b] * 25
    results = await asyncio.gather(
        *(c.call("POST", f"/v1/threads/{thread_id}/runs", {}) for c in clients)
    )
    statuses = Counter(status for status, _ in results)
    assert statuses == {201: 1, 409: 49}, statuses
    assert {body["code"] for status, body in results if status == 409} == {"runs.thread_busy"}
    started = [e for e in pair.events() if e[2] == "run.started"]
    assert len(started) == 1


async def test_the_org_cap_is_exact_across_processes(pair_factory: Any) -> None:
    limit = 5
    pair: Pair = await pair_factory(max_live=limit)
    threads = [await _thread_with_message(pair.on_a, f"/slow 200\n{LONG}") for _ in range(30)]
    clients = [pair.on_a, pair.on_b] * 15
    results = await asyncio.gather(
        *(
            c.call("POST", f"/v1/threads/{t}/runs", {})
            for c, t in zip(clients, threads, strict=True)
        )
    )
    statuses = Counter(status for status, _ in results)
    assert statuses == {201: limit, 429: 30 - limit}, statuses
    assert {body["code"] for status, body in results if status == 429} == {"runs.limit_exceeded"}
    started = [e for e in pair.events() if e[2] == "run.started"]
    assert len(started) == limit
    # Both processes took part in the race and in the winning.
    winners = [c for c, (status, _) in zip(clients, results, strict=True) if status == 201]
    assert len(winners) == limit


async def test_kill_9_hands_every_run_to_the_other_process(pair_factory: Any) -> None:
    pair: Pair = await pair_factory()
    runs = []
    for i in range(10):
        thread_id = await _thread_with_message(
            pair.on_a, f'/tool counter {{"marker": "m{i}", "seconds": 5}}'
        )
        status, created = await pair.on_a.call(
            "POST", f"/v1/threads/{thread_id}/runs", {"persona_id": "durable@1"}
        )
        assert status == 201, created
        runs.append(str(created["run_id"]))
    count_file = Path(pair.a.count_file)
    async with asyncio.timeout(60):  # every run is inside its (slow) tool call
        while not count_file.exists() or len(count_file.read_text().split()) < 10:
            await asyncio.sleep(0.05)
    pair.a.kill()
    killed = time.monotonic()
    for run_id in runs:
        await _wait_status(pair.on_b, run_id, {"completed"}, LEASE_SECONDS + 5)
    elapsed = time.monotonic() - killed
    print(f"kill -9 to all 10 runs completed on B: {elapsed:.2f} s")
    assert elapsed <= LEASE_SECONDS + 5, elapsed

    b_pid = str(pair.b.process.pid) if pair.b.process else ""
    executed = Counter(count_file.read_text().split())
    if Path(pair.b.count_file).exists():
        executed.update(Path(pair.b.count_file).read_text().split())
    for run_id in runs:
        events = pair.run_events(run_id)
        types = [t for t, _ in events]
        assert sum(t in TERMINAL for t in types) == 1, types
        assert types[-1] == "run.completed", types
        resumed = [d for t, d in events if t == "run.resumed"]
        assert len(resumed) == 1, types
        assert resumed[0]["process"].split(":")[1] == b_pid, resumed
        assert resumed[0]["reason"] == "takeover"
        started = events[0][1]
        assert started["process"].split(":")[1] == str(pair.a.process.pid if pair.a.process else "")
        # The tool call cut by the kill was not run again: its result says so.
        [result] = [d for t, d in events if t == "tool.result"]
        assert result["is_error"] and "not repeated" in result["output"], result
    # No tool ran twice (each marker once, and only on A).
    assert set(executed.values()) == {1}, executed
    verify = pair.b.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_sigterm_hands_the_runs_over_at_once(pair_factory: Any) -> None:
    pair: Pair = await pair_factory()
    runs = []
    for _ in range(3):
        thread_id = await _thread_with_message(pair.on_a, f"/slow 150\n{LONG}")
        status, created = await pair.on_a.call("POST", f"/v1/threads/{thread_id}/runs", {})
        assert status == 201, created
        runs.append(str(created["run_id"]))
    async with asyncio.timeout(60):  # every run is streaming
        while not all(any(t == "message.delta" for t, _ in pair.run_events(r)) for r in runs):
            await asyncio.sleep(0.05)
    assert pair.a.process is not None
    pair.a.process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    resumed_at: dict[str, float] = {}
    async with asyncio.timeout(30):
        while len(resumed_at) < len(runs):
            for run_id in runs:
                if run_id not in resumed_at and any(
                    t == "run.resumed" for t, _ in pair.run_events(run_id)
                ):
                    resumed_at[run_id] = time.monotonic() - stopped
            await asyncio.sleep(0.02)
    assert pair.a.process.wait(30) == 0
    print(f"SIGTERM to run.resumed on B: {sorted(round(v, 2) for v in resumed_at.values())} s")
    assert max(resumed_at.values()) < 2.0, resumed_at
    b_pid = str(pair.b.process.pid if pair.b.process else "")
    for run_id in runs:
        await _wait_status(pair.on_b, run_id, {"completed"}, 60)
        events = pair.run_events(run_id)
        types = [t for t, _ in events]
        assert sum(t in TERMINAL for t in types) == 1, types
        [resumed] = [d for t, d in events if t == "run.resumed"]
        assert resumed["process"].split(":")[1] == b_pid


async def test_input_sent_to_the_other_process_continues_the_run(pair_factory: Any) -> None:
    pair: Pair = await pair_factory()
    thread_id = await _thread_with_message(pair.on_a, "/ask what colour?")
    status, created = await pair.on_a.call(
        "POST", f"/v1/threads/{thread_id}/runs", {"persona_id": "durable@1"}
    )
    assert status == 201, created
    run_id = str(created["run_id"])
    await _wait_status(pair.on_b, run_id, {"waiting_for_input"}, 60)
    status, body = await pair.on_b.call("POST", f"/v1/runs/{run_id}/input", {"content": "blue"})
    assert status == 200, body
    assert await _wait_status(pair.on_a, run_id, {"completed"}, 60) == "completed"
    types = [t for t, _ in pair.run_events(run_id)]
    assert "run.resumed" not in types  # continued by B as a new step, not taken over
    assert sum(t in TERMINAL for t in types) == 1, types


async def test_the_login_throttle_counts_across_processes(pair_factory: Any) -> None:
    pair: Pair = await pair_factory(login_failures=3)
    answers = []
    for client in (pair.on_a, pair.on_b, pair.on_a, pair.on_b):
        status, body = await client.call(
            "POST", "/v1/auth/login", {"login": "nobody", "password": "wrong"}
        )
        answers.append((status, body.get("code")))
    assert [status for status, _ in answers[:3]] == [401, 401, 401], answers
    assert answers[3] == (429, "auth.rate_limited"), answers


async def test_a_cancel_sent_to_b_stops_the_run_driven_by_a(pair_factory: Any) -> None:
    pair: Pair = await pair_factory()
    thread_id = await _thread_with_message(pair.on_a, f"/slow 5000\n{LONG}")
    status, created = await pair.on_a.call("POST", f"/v1/threads/{thread_id}/runs", {})
    assert status == 201, created
    run_id = str(created["run_id"])
    async with asyncio.timeout(60):  # A streams (and then waits 5 s before its next delta)
        while not any(t == "message.delta" for t, _ in pair.run_events(run_id)):
            await asyncio.sleep(0.05)
    status, receipt = await pair.on_b.call("POST", f"/v1/runs/{run_id}:cancel")
    assert status == 200, receipt
    assert receipt["status"] == "cancelled"
    cancelled = time.monotonic()
    # A hears of the cancel through the log (its listener) and stops the task at once, long
    # before its next delta would have met the cancel as a refused append.
    marker = "run.ended_elsewhere"
    async with asyncio.timeout(30):
        while not any(
            marker in line and run_id in line for line in pair.a.log.read_text().splitlines()
        ):
            await asyncio.sleep(0.02)
    stopped_after = time.monotonic() - cancelled
    print(f"cancel on B to A's task stopped: {stopped_after:.2f} s")
    assert stopped_after < 1.0, stopped_after
    await asyncio.sleep(6)  # past A's next delta, had it gone on
    types = [t for t, _ in pair.run_events(run_id)]
    assert types[-1] == "run.cancelled", types
    assert sum(t in TERMINAL for t in types) == 1, types
