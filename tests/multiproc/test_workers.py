"""``runlog serve --workers N``: N processes on one port, supervised by a parent."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import psycopg

from tests.durability.server_process import ROOT, Client, ServerProcess
from tests.multiproc.conftest import SECRET_CONFIG, Servers, children


def socket_owner(server_port: int, client_port: int, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the server side of the TCP connection from ``client_port``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if (
            int(local.rsplit(":", 1)[1], 16) == server_port
            and int(remote.rsplit(":", 1)[1], 16) == client_port
        ):
            inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


async def serving_pids(server: ServerProcess, workers: set[int], want: set[int]) -> set[int]:
    """Open connections (each answered by a request) until every pid of ``want`` accepted
    one; the pids seen."""
    seen: set[int] = set()
    async with asyncio.timeout(60):
        while not want <= seen:
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = sock.recv(1024)
                assert answer.startswith(b"HTTP/1.1 200"), answer
                owner = socket_owner(server.port, sock.getsockname()[1], workers)
                if owner is not None:
                    seen.add(owner)
            await asyncio.sleep(0.01)
    return seen


async def wait_children(parent: int, count: int, not_in: frozenset[int] = frozenset()) -> set[int]:
    async with asyncio.timeout(60):
        while True:
            found = children(parent)
            if len(found) == count and not found & not_in:
                return found
            await asyncio.sleep(0.05)


async def test_two_workers_share_the_port_are_restarted_and_stop_together(
    servers: Servers,
) -> None:
    server = await servers.start("w", extra_args=("--workers", "2"))
    assert server.process is not None
    parent = server.process.pid
    first = await wait_children(parent, 2)
    assert await serving_pids(server, first, first) == first

    # The parent prepared the empty log once: one org, one key, one banner.
    with psycopg.connect(servers.db) as conn:
        [(orgs,)] = conn.execute("SELECT count(*) FROM events WHERE type = 'org.created'")
    assert orgs == 1
    assert server.log.read_text().count("API key: ") == 1

    # A worker that dies is replaced; the port keeps being served meanwhile.
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    now = await wait_children(parent, 2, frozenset({victim}))
    assert now - first and first - now == {victim}
    await serving_pids(server, now, now)
    async with aiohttp.ClientSession() as session:
        client = Client(session, server.url)
        run_id = await client.start_run("hello workers")
        assert await client.settle(run_id) == "completed"

    # SIGTERM to the parent stops every worker gracefully, and the parent exits 0.
    assert server.terminate(60) == 0
    for pid in now:
        assert not Path(f"/proc/{pid}").exists()
    text = server.log.read_text()
    assert text.count("runlog: shutting down") >= 2
    stopped = [json.loads(line) for line in text.splitlines() if '"workers.stopped"' in line]
    assert stopped and all(entry["clean"] is True for entry in stopped), stopped


def test_workers_on_sqlite_are_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runs", "serve", "--workers", "2", "--db", str(tmp_path / "x.db")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--workers 2 needs a PostgreSQL log" in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_the_parent_gives_up_on_workers_that_cannot_stay_up(tmp_path: Path, pg_db: str) -> None:
    """The port is held by a socket without SO_REUSEPORT: every worker dies at start, the
    parent restarts each with growing delays, then gives up and exits 1."""
    server = ServerProcess(tmp_path, SECRET_CONFIG, db=pg_db)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", server.port))
        holder.listen()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "runs",
                "serve",
                "--workers",
                "2",
                "--port",
                str(server.port),
                "--db",
                pg_db,
                "--config",
                str(server.config),
            ],
            cwd=ROOT,
            env=server.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert '"workers.giving_up"' in result.stdout
    assert result.stdout.count('"workers.died"') >= 6
