"""The real server as a subprocess, for crash, shutdown and several-process tests.

By default each server has its own SQLite file under ``tmp``; ``db`` names another log (a
``postgresql://`` URL shared by several servers, say), and ``extra_args`` are added to
``runlog serve``'s command line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
KEY = "rl_durability_test_key_0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(
        self,
        tmp: Path,
        extra_config: str = "",
        *,
        db: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.db = db or str(tmp / "runlog.db")
        self.extra_args = extra_args
        self.count_file = str(tmp / "tool-executions.txt")
        personas = tmp / "personas"
        personas.mkdir(exist_ok=True)
        (personas / "durable@1.toml").write_text(
            'key = "durable"\nversion = 1\nsystem_prompt = "test"\n'
            'tools = ["counter", "calculator", "ask_user"]\nmax_iterations = 5\n'
        )
        self.config = tmp / "runlog.toml"
        self.config.write_text(
            "delta_coalesce_ms = 0\nmax_live_runs_per_org = 100\n"
            f'personas_dir = "{personas}"\n'
            'tool_modules = ["tests.durability.counting_tool"]\n'
            "shutdown_timeout_seconds = 5\n" + extra_config
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tmp / "server.log"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RUNLOG_BOOTSTRAP_API_KEY": KEY,
            "RUNLOG_TEST_COUNT_FILE": self.count_file,
            "PYTHONPATH": str(ROOT),
        }

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "runs",
                    "--port",
                    str(self.port),
                    "--db",
                    self.db,
                    "--config",
                    str(self.config),
                    *self.extra_args,
                ],
                cwd=ROOT,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            await self._wait_ready()
        except BaseException:
            # A server that never became ready must not outlive the test that started it.
            self.process.kill()
            self.process.wait(10)
            raise

    async def _wait_ready(self) -> None:
        assert self.process is not None
        # Generous: start-up imports the Anthropic SDK, which takes seconds on a busy machine.
        async with asyncio.timeout(60):
            while True:
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                try:
                    async with (
                        aiohttp.ClientSession() as session,
                        session.get(f"{self.url}/readyz") as response,
                    ):
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runs", *args, "--db", self.db],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.headers = {"Authorization": f"Bearer {KEY}"}

    async def call(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, self.url + path, json=json, headers=self.headers
        ) as response:
            return response.status, await response.json()

    async def start_run(self, content: str, **body: Any) -> str:
        status, thread = await self.call("POST", "/v1/threads", {"title": "durability"})
        assert status == 201, thread
        status, _ = await self.call(
            "POST", f"/v1/threads/{thread['id']}/messages", {"content": content}
        )
        assert status == 201
        status, created = await self.call("POST", f"/v1/threads/{thread['id']}/runs", body)
        assert status == 201, created
        return str(created["run_id"])

    async def settle(self, run_id: str, timeout: float = 30) -> str:
        """Poll (over HTTP, against another process) until terminal or waiting for input."""
        async with asyncio.timeout(timeout):
            while True:
                status, run = await self.call("GET", f"/v1/runs/{run_id}")
                assert status == 200, run
                if run["status"] in {"completed", "failed", "cancelled", "waiting_for_input"}:
                    return str(run["status"])
                await asyncio.sleep(0.05)

    async def read_sse(self, run_id: str, into: list[dict[str, Any]]) -> None:
        """Collect frames until the stream ends or the connection drops."""
        import json

        try:
            async with self.session.get(
                f"{self.url}/v1/runs/{run_id}/events", headers=self.headers
            ) as response:
                async for raw in response.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("data: "):
                        into.append(json.loads(line[6:]))
        except (aiohttp.ClientError, ConnectionError):
            pass
