"""An SSE stream lives only as long as its credential: revoking the key or deleting the user
(from the admin CLI, another process) ends it within a second; a login token's expiry ends it.

The server is a real subprocess and the revocation a real ``runlog admin`` process, so the
stream can only learn of it from the log file."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.durability.server_process import KEY, ROOT, Client, ServerProcess


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(tmp_path, "access_token_ttl_seconds = 3\n")
    await proc.start()
    try:
        yield proc
    finally:
        proc.terminate()


def _cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runs", "admin", "--db", server.db, *args],
        cwd=ROOT,
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _admin(server: ServerProcess, *args: str) -> str:
    done = _cli(server, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _new_key(server: ServerProcess, user: str) -> tuple[str, str]:
    """``(key, key_id)`` of a new key of ``user``."""
    done = _cli(server, "create-key", "--user", user)
    assert done.returncode == 0, done.stderr
    match = re.search(r"key id (\S+);", done.stderr)
    assert match is not None, done.stderr
    return done.stdout.strip(), match.group(1)


def _org_id(server: ServerProcess) -> str:
    match = re.search(r"org=(\S+)", _admin(server, "list-keys"))
    assert match is not None
    return match.group(1)


async def _waiting_run(client: Client) -> str:
    run_id = await client.start_run("/ask which colour?")
    assert await client.settle(run_id) == "waiting_for_input"
    return run_id


class Stream:
    """An open SSE response read in the background; ``ended`` is set at its end."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self.session, self.url, self.token = session, url, token
        self.frames: list[str] = []
        self.ended_at: float | None = None
        self.waiting = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            async with self.session.get(self.url, headers=headers) as response:
                assert response.status == 200, await response.text()
                async for raw in response.content:
                    line = raw.decode()
                    if line.startswith("data: "):
                        self.frames.append(line)
                        if "run.waiting_for_input" in line:
                            self.waiting.set()
        except aiohttp.ClientError:
            pass
        self.ended_at = time.monotonic()

    async def __aenter__(self) -> Stream:
        self.task = asyncio.create_task(self.run())
        async with asyncio.timeout(10):
            await self.waiting.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def _ends_within(stream: Stream, seconds: float) -> float:
    """Seconds from now until the stream ended (fails if it is still open after ``seconds``)."""
    started = time.monotonic()
    assert stream.task is not None
    done, _ = await asyncio.wait([stream.task], timeout=seconds)
    assert done, f"the stream was still open {seconds} s later"
    assert stream.ended_at is not None
    return stream.ended_at - started


async def test_revoking_a_key_ends_its_streams_within_a_second(server: ServerProcess) -> None:
    org = _org_id(server)
    user = _admin(server, "create-user", "--org", org, "--name", "bob", "--email", "b@x.org")
    key, key_id = _new_key(server, user)
    other, _ = _new_key(server, user)
    async with aiohttp.ClientSession() as session:
        client = Client(session, server.url)
        run_id = await _waiting_run(client)
        url = f"{server.url}/v1/runs/{run_id}/events"
        async with Stream(session, url, key) as revoked, Stream(session, url, other) as kept:
            await asyncio.to_thread(_admin, server, "revoke-key", key_id)
            assert await _ends_within(revoked, 1.0) < 1.0
            # The other key's stream stays open and still gets the run's events.
            assert kept.ended_at is None
            status, _ = await client.call("POST", f"/v1/runs/{run_id}/input", {"content": "red"})
            assert status == 200
            assert await _ends_within(kept, 5.0) < 5.0
            assert any("run.completed" in f for f in kept.frames)
            assert not any("run.input_provided" in f for f in revoked.frames)
        # The revoked key no longer opens a stream.
        async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
            assert response.status == 401


async def test_deleting_a_user_ends_their_token_streams(server: ServerProcess) -> None:
    org = _org_id(server)
    user = _admin(
        server, "create-user", "--org", org, "--name", "carol", "--email", "c@x.org",
        "--password", "correct horse",
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        client = Client(session, server.url)
        run_id = await _waiting_run(client)
        async with session.post(
            f"{server.url}/v1/auth/login", json={"login": "carol", "password": "correct horse"}
        ) as response:
            assert response.status == 200
            token = (await response.json())["access_token"]
        url = f"{server.url}/v1/runs/{run_id}/events"
        async with Stream(session, url, token) as stream:
            await asyncio.to_thread(_admin, server, "delete-user", user)
            assert await _ends_within(stream, 1.0) < 1.0


async def test_a_token_stream_ends_when_the_token_expires(server: ServerProcess) -> None:
    org = _org_id(server)
    _admin(
        server, "create-user", "--org", org, "--name", "dave", "--email", "d@x.org",
        "--password", "correct horse",
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        client = Client(session, server.url)
        run_id = await _waiting_run(client)
        async with session.post(
            f"{server.url}/v1/auth/login", json={"login": "dave", "password": "correct horse"}
        ) as response:
            body = await response.json()
        assert body["expires_in"] == 3
        url = f"{server.url}/v1/runs/{run_id}/events"
        async with Stream(session, url, body["access_token"]) as stream:
            # The heartbeat (15 s) would keep it open; the expiry (3 s after login) ends it.
            await _ends_within(stream, 5.0)


async def test_a_key_revoked_by_another_process_is_refused_on_the_next_request(
    server: ServerProcess,
) -> None:
    """The server remembers verified keys; a revocation or a user's deletion that another
    process (the admin CLI) committed is in force for the very next request, with no wait."""
    org = _org_id(server)
    user = _admin(server, "create-user", "--org", org, "--name", "erin", "--email", "e@x.org")
    key, key_id = _new_key(server, user)
    other, _ = _new_key(server, user)
    async with aiohttp.ClientSession() as session:

        async def status(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{server.url}/v1/threads", headers=headers) as response:
                return response.status

        for _ in range(3):  # verified once, then answered from memory
            assert await status(key) == 200
            assert await status(other) == 200
        await asyncio.to_thread(_admin, server, "revoke-key", key_id)
        assert await status(key) == 401
        assert await status(other) == 200
        await asyncio.to_thread(_admin, server, "delete-user", user)
        assert await status(other) == 401
        assert await status(KEY) == 200
