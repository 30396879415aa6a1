"""``runlog tail`` follows a live run over SSE from a real server and prints it readably."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from tests.durability.server_process import KEY, ROOT, Client, ServerProcess


async def test_tail_prints_a_run_as_it_streams_and_exits_with_its_status(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, server.url)
            run_id = await client.start_run(
                '/slow 30\n/tool calculator {"expression": "6*7"}', persona_id="durable@1"
            )
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "runs",
                "tail",
                run_id,
                "--url",
                server.url,
                "--token",
                KEY,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 0, stderr.decode()
            text = stdout.decode()
            assert f"[run {run_id}" in text
            assert '→ calculator({"expression": "6*7"})' in text
            assert "← 42" in text
            assert "tool calculator returned: 42" in text
            assert text.rstrip().endswith("[completed]")

            failed = await client.start_run("/fail")
            assert await client.settle(failed) == "failed"
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "runs",
                "tail",
                failed,
                "--url",
                server.url,
                "--token",
                KEY,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, _ = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 1
            assert "[failed: provider.error" in stdout.decode()
    finally:
        server.terminate()
