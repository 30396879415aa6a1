"""Live events across processes: a run driven by server A, followed over SSE on server B."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import psycopg

from tests.durability.server_process import KEY, Client, ServerProcess
from tests.multiproc.conftest import Servers, listening_backends, log_lines

TERMINAL = {"run.completed", "run.failed", "run.cancelled"}


async def follow(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    run_id: str,
    into: list[dict[str, Any]],
    opened: asyncio.Event | None = None,
) -> None:
    """Read the run's SSE from ``after_seq=0`` on ``server`` until the stream ends."""
    async with session.get(
        f"{server.url}/v1/runs/{run_id}/events",
        params={"after_seq": "0"},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(": ") and opened is not None:
                opened.set()
            if line.startswith("data: "):
                into.append(json.loads(line[6:]))


async def logged_seqs(client: Client, run_id: str) -> list[tuple[int, str]]:
    frames: list[dict[str, Any]] = []
    async with client.session.get(
        f"{client.url}/v1/runs/{run_id}/events",
        params={"follow": "0"},
        headers=client.headers,
    ) as response:
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
    return [(frame["seq"], frame["type"]) for frame in frames]


def assert_whole(frames: list[dict[str, Any]], log: list[tuple[int, str]]) -> None:
    """Every event of the run once, in order, ending with its terminal event."""
    got = [(frame["seq"], frame["type"]) for frame in frames]
    assert got == log, (got[:5], got[-5:], len(got), len(log))
    assert [seq for seq, _ in got] == list(range(1, len(got) + 1))
    assert got[-1][1] in TERMINAL


async def test_a_run_created_on_a_is_followed_live_on_b(servers: Servers) -> None:
    a, b = await servers.pair()
    async with aiohttp.ClientSession() as session:
        on_a, on_b = Client(session, a.url), Client(session, b.url)
        # About 40 deltas 30 ms apart: B follows while A appends.
        run_id = await on_a.start_run("/slow 30\n" + "streaming across processes " * 6)
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(60):
            await follow(session, b, run_id, frames)
        assert frames[-1]["type"] == "run.completed"
        assert_whole(frames, await logged_seqs(on_a, run_id))
        assert sum(frame["type"] == "message.delta" for frame in frames) >= 20
        # The run was driven by A alone: B only read.
        assert await on_b.settle(run_id) == "completed"


async def test_a_killed_listener_reconnects_and_the_follower_misses_nothing(
    servers: Servers,
) -> None:
    a, b = await servers.pair()
    async with aiohttp.ClientSession() as session:
        on_a, on_b = Client(session, a.url), Client(session, b.url)
        # About 60 deltas 50 ms apart (3 s): the listeners die in the middle.
        run_id = await on_a.start_run("/slow 50\n" + "a long run keeps streaming " * 9)
        frames: list[dict[str, Any]] = []
        opened = asyncio.Event()
        follower = asyncio.create_task(follow(session, b, run_id, frames, opened))
        async with asyncio.timeout(30):
            await opened.wait()
            while len(frames) < 5:
                await asyncio.sleep(0.01)
        pids = listening_backends(servers.db)
        assert len(pids) == 2  # one listening connection per process
        with psycopg.connect(servers.db, autocommit=True) as admin:
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
        at_kill = len(frames)
        async with asyncio.timeout(60):
            await follower
        assert len(frames) > at_kill + 10  # most of the run streamed after the kill
        assert_whole(frames, await logged_seqs(on_a, run_id))
        # B heard of it and came back: a log line, a metric, a new listening connection.
        async with asyncio.timeout(30):
            while not any(e.get("event") == "store.listen_reconnected" for e in log_lines(b)):
                await asyncio.sleep(0.05)
            while len(set(listening_backends(servers.db)) - set(pids)) < 2:
                await asyncio.sleep(0.05)
        async with session.get(f"{b.url}/metrics", headers=on_b.headers) as response:
            text = await response.text()
        [line] = [x for x in text.splitlines() if x.startswith("runlog_live_reconnects_total ")]
        assert float(line.split()[1]) >= 1
