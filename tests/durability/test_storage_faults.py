"""A full disk under a live run: the service says it is not ready and refuses writes with 503,
the run waits and retries its append, and once space returns it finishes, without a restart.

The log lives on a small file system of its own (a tmpfs, else a loop-mounted file), which is
filled with a plain file while the run streams; the server is a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import aiohttp

from tests.durability.disks import small_disk
from tests.durability.server_process import Client, ServerProcess

TEXT = " ".join(f"word{i:03d}" for i in range(150))


def fill(disk: Path) -> Path:
    """Fill the file system to the last byte; returns the filler to delete."""
    filler = disk / "filler"
    chunk = b"\0" * (1024 * 1024)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (len(chunk), 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk[:size])
    finally:
        os.close(fd)
    return filler


async def _status(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str]]:
    async with session.get(url) as response:
        return response.status, await response.json()


async def test_a_full_disk_pauses_runs_and_refuses_writes_until_space_returns(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        server = ServerProcess(tmp_path)
        server.db = str(disk / "runlog.db")
        await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                client = Client(session, server.url)
                run_id = await client.start_run(f"/slow 20\n{TEXT}")
                status, thread_runs = await client.call("GET", "/v1/runs?limit=1")
                thread_id = thread_runs[0]["thread_id"]
                filler = fill(disk)

                # The run's appends now fail: readiness says why, writes are refused with 503.
                async with asyncio.timeout(20):
                    while (ready := await _status(session, f"{server.url}/readyz"))[0] == 200:
                        await asyncio.sleep(0.05)
                assert ready[0] == 503
                assert "not writable" in ready[1]["reason"], ready
                status, body = await client.call("POST", "/v1/threads", {"title": "x" * 400})
                assert (status, body["code"]) == (503, "internal.unavailable"), body
                status, run = await client.call("GET", f"/v1/runs/{run_id}")
                assert run["status"] == "running"

                filler.unlink()
                # Space is back: the run finishes without a restart, nothing of it lost.
                assert await client.settle(run_id, timeout=30) == "completed"
                status, messages = await client.call("GET", f"/v1/threads/{thread_id}/messages")
                assert messages[-1]["content"] == f"echo: {TEXT}"
                assert (await _status(session, f"{server.url}/readyz"))[0] == 200
                # The thread and the org's live-run slot are free again.
                status, created = await client.call("POST", f"/v1/threads/{thread_id}/runs", {})
                assert status == 201, created
                assert await client.settle(created["run_id"]) == "completed"
        finally:
            server.terminate()
        log = server.log.read_text()
        assert "Task exception was never retrieved" not in log
        assert "run.crashed" not in log
        assert "run.append_waiting" in log
        verified = server.cli("verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_a_run_whose_log_stays_unwritable_fails_cleanly_once_it_can(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        server = ServerProcess(tmp_path, "storage_retry_seconds = 1\n")
        server.db = str(disk / "runlog.db")
        await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                client = Client(session, server.url)
                run_id = await client.start_run(f"/slow 20\n{TEXT}")
                filler = fill(disk)
                async with asyncio.timeout(20):
                    while "run.storage_failed" not in server.log.read_text():
                        await asyncio.sleep(0.05)
                filler.unlink()
                assert await client.settle(run_id, timeout=30) == "failed"
                _, run = await client.call("GET", f"/v1/runs/{run_id}")
                assert run["error_class"] == "internal.storage", run
        finally:
            server.terminate()
        log = server.log.read_text()
        assert "Task exception was never retrieved" not in log
        assert "run.crashed" not in log
