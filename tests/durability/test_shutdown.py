"""SIGTERM under load: the server stops within its bound, leaves no half-written state, and the
runs it stopped continue after the next start."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.durability.server_process import Client, ServerProcess

LONG = " ".join(f"word{i}" for i in range(60))


async def test_sigterm_under_load_stops_cleanly_and_runs_resume(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    await server.start()
    async with aiohttp.ClientSession() as session:
        client = Client(session, server.url)
        runs = [await client.start_run(f"/slow 20\n{LONG}") for _ in range(4)]
        runs.append(
            await client.start_run(
                '/tool counter {"marker": "t", "seconds": 0.5}', persona_id="durable@1"
            )
        )
        frames: dict[str, list[dict[str, Any]]] = {r: [] for r in runs}
        readers = [asyncio.create_task(client.read_sse(r, frames[r])) for r in runs]
        async with asyncio.timeout(10):
            while not all(any(f["type"] == "message.delta" for f in frames[r]) for r in runs[:4]):
                await asyncio.sleep(0.02)
        started = time.monotonic()
        assert server.terminate(timeout=15) == 0
        assert time.monotonic() - started < 8  # shutdown_timeout_seconds = 5, plus start-up
        # Every stream ended (cleanly closed by the server) rather than hanging.
        async with asyncio.timeout(5):
            await asyncio.gather(*readers)
        assert "Traceback" not in server.log.read_text()

        verify = server.cli("verify")
        assert verify.returncode == 0, verify.stdout
        check = server.cli("rebuild", "--check")
        assert check.returncode == 0, check.stdout

        await server.start()
        for run_id in runs:
            assert await client.settle(run_id) == "completed"
        _, listed = await client.call("GET", "/v1/runs?status=running")
        assert listed == []
    assert server.terminate() == 0
    check = server.cli("rebuild", "--check")
    assert check.returncode == 0, check.stdout
