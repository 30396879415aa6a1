"""``runlog backup`` copies a live log while the real server streams 20 runs into it: the copy
verifies, its projections rebuild equal, and it holds every run finished before it began."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.durability.server_process import ROOT, Client, ServerProcess

TERMINAL = {"completed", "failed", "cancelled"}
# 200 deltas 40 ms apart: each run streams for about 8 s, far longer than a backup takes.
STREAMING = "/slow 40\n" + "x" * 800


async def cli(server: ServerProcess, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runs",
        *args,
        cwd=ROOT,
        env=server.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_backup_while_twenty_runs_stream(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    copy = tmp_path / "backup.db"
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, server.url)
            finished: dict[str, str] = {}
            for content in ("first", "/fail", '/tool calculator {"expression": "2+3"}'):
                run_id = await client.start_run(content, persona_id="durable@1")
                finished[run_id] = await client.settle(run_id)
            cancelled = await client.start_run(STREAMING)
            await client.call("POST", f"/v1/runs/{cancelled}:cancel")
            finished[cancelled] = await client.settle(cancelled)
            assert sorted(finished.values()) == ["cancelled", "completed", "completed", "failed"]

            streaming = [await client.start_run(STREAMING) for _ in range(20)]
            frames: dict[str, list[dict[str, Any]]] = {run: [] for run in streaming}
            readers = [asyncio.create_task(client.read_sse(run, frames[run])) for run in streaming]
            async with asyncio.timeout(60):  # every run is mid-stream before the backup
                while not all(
                    any(f["type"] == "message.delta" for f in frames[run]) for run in streaming
                ):
                    await asyncio.sleep(0.05)

            code, out, err = await cli(server, "backup", "--db", server.db, "--to", str(copy))
            assert code == 0, (out, err)
            match = re.search(r"head position (\d+), head hash ([0-9a-f]{64})", out)
            assert match, out

            await asyncio.wait_for(asyncio.gather(*readers), 120)
            assert all(frames[run][-1]["type"] == "run.completed" for run in streaming)
    finally:
        assert server.terminate() == 0

    with sqlite3.connect(copy) as backup:
        (journal,) = backup.execute("PRAGMA journal_mode").fetchone()
    assert journal == "delete"  # one self-contained file, whatever happens to the live one
    assert not list(tmp_path.glob(".backup.db*"))  # no partial file left behind

    code, out, err = await cli(server, "verify", "--db", str(copy))
    assert code == 0, (out, err)
    assert f"positions 1..{match[1]} gapless" in out
    code, out, err = await cli(server, "rebuild", "--check", "--db", str(copy))
    assert code == 0, (out, err)
    assert out.startswith("ok: every projection rebuilt")

    with sqlite3.connect(server.db) as live:
        head = live.execute("SELECT max(position) FROM events").fetchone()[0]
        # The copy is a prefix of the live log: same hash at its head position.
        assert live.execute(
            "SELECT hash FROM events WHERE position = ?", (int(match[1]),)
        ).fetchone() == (match[2],)
    with sqlite3.connect(copy) as backup:
        statuses = dict(backup.execute("SELECT run_id, status FROM runs").fetchall())
    assert int(match[1]) < head  # taken while the server was still writing
    for run_id, status in finished.items():
        assert statuses[run_id] == status
    # Runs still streaming at the backup are in the copy, not yet finished there.
    assert any(statuses.get(run) not in TERMINAL for run in streaming)

    code, out, err = await cli(server, "backup", "--db", server.db, "--to", str(copy))
    assert code == 2
    assert "exists" in err
    assert out == ""
