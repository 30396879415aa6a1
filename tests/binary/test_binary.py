"""``scripts/build-binary`` makes one executable that runs with an empty environment (no Python,
no virtualenv, no PATH beyond /usr/bin:/bin): it serves every route, streams a scripted run to
``run.completed``, stops gracefully, and every sub-command works from it.

One module on purpose: building takes minutes, so xdist gives it a worker of its own, and the
build is made once (module fixture) into this test's temporary folder, never reused."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runs.config import load_config
from server import create_app
from tests.durability.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]
BARE_ENV = {"PATH": "/usr/bin:/bin"}  # what `env -i PATH=/usr/bin:/bin` leaves
MAX_SIZE = 35 * 1024 * 1024


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("binary")
    build = subprocess.run(
        [str(ROOT / "scripts" / "build-binary")],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHON": sys.executable,
            "RUNLOG_BUILD_DIR": str(out / "build"),
            "RUNLOG_DIST_DIR": str(out / "dist"),
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return out / "dist" / "runlog"


def bare(binary: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the binary as ``env -i PATH=/usr/bin:/bin runlog ARGS``."""
    return subprocess.run(
        ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in BARE_ENV.items()), str(binary), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def head_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_the_binary_is_one_file_under_35_mb_and_knows_its_commit(
    binary: Path, tmp_path: Path
) -> None:
    assert binary.is_file()
    assert os.access(binary, os.X_OK)
    assert binary.stat().st_size < MAX_SIZE, binary.stat().st_size
    done = bare(binary, "--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # A build records the commit (with +dirty for uncommitted changes); never "source".
    assert re.fullmatch(
        rf"runlog \d+\.\d+\.\d+\S* \(commit {head_commit()}(\+dirty)?\)\n", done.stdout
    ), done.stdout


class Served:
    def __init__(self, process: asyncio.subprocess.Process, url: str, key: str, banner: str):
        self.process = process
        self.url = url
        self.key = key
        self.banner = banner


@pytest.fixture
async def served(binary: Path, tmp_path: Path) -> AsyncIterator[Served]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        "/usr/bin/env",
        "-i",
        *(f"{k}={v}" for k, v in BARE_ENV.items()),
        str(binary),
        "serve",
        "--db",
        "./runlog.db",
        "--port",
        str(port),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any(line.startswith("It is shown only once") for line in lines):
                raw = await process.stdout.readline()
                assert raw, "".join(lines)  # the binary exited before its banner
                lines.append(raw.decode())
        banner = "".join(lines)
        key = re.search(r"API key: (\S+)", banner)
        assert key, banner
        yield Served(process, f"http://127.0.0.1:{port}", key[1], banner)
    finally:
        if process.returncode is None:
            # SIGTERM first: the one-file binary's bootloader passes it on to the Python child
            # that serves, whereas SIGKILL would orphan that child, still holding the pipe.
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_served_by_the_binary_in_an_empty_environment(
    served: Served, binary: Path, tmp_path: Path
) -> None:
    banner = served.banner
    assert re.search(rf"^runlog \S+ \(commit {head_commit()}(\+dirty)?\)$", banner, re.M), banner
    assert f"runlog listening on {served.url} (log: ./runlog.db)" in banner
    assert "First start: created org 'default' and user 'admin'." in banner
    auth = {"Authorization": f"Bearer {served.key}"}
    exercised: set[tuple[str, str]] = set()

    async with aiohttp.ClientSession(served.url) as http:

        async def call(method: str, route: str, path: str, expect: int, body: Any = None) -> Any:
            exercised.add((method, route))
            async with http.request(method, path, json=body, headers=auth) as response:
                text = await response.text()
                assert response.status == expect, (method, path, response.status, text)
                is_json = response.content_type == "application/json"
                return json.loads(text) if is_json else text

        async with asyncio.timeout(60):
            while (await call("GET", "/readyz", "/readyz", 200))["status"] != "ready":
                await asyncio.sleep(0.05)
        await call("GET", "/healthz", "/healthz", 200)
        document = await call("GET", "/openapi.json", "/openapi.json", 200)
        assert "/v1/runs/{run_id}/events" in document["paths"]
        bad = {"login": "admin", "password": "wrong-password"}
        await call("POST", "/v1/auth/login", "/v1/auth/login", 401, bad)

        thread = await call("POST", "/v1/threads", "/v1/threads", 201, {"title": "binary"})
        t = thread["id"]
        await call("GET", "/v1/threads", "/v1/threads", 200)
        await call("GET", "/v1/threads/{thread_id}", f"/v1/threads/{t}", 200)
        messages = "/v1/threads/{thread_id}/messages"
        await call("POST", messages, f"/v1/threads/{t}/messages", 201, {"content": "hello"})
        created = await call(
            "POST",
            "/v1/threads/{thread_id}/runs",
            f"/v1/threads/{t}/runs",
            201,
            {"route_id": "scripted", "persona_id": "default@1"},  # the persona is package data
        )
        run = created["run_id"]
        events = await call(
            "GET", "/v1/runs/{run_id}/events", f"/v1/runs/{run}/events?after_seq=0", 200
        )
        frames = [json.loads(x[6:]) for x in events.splitlines() if x.startswith("data: ")]
        assert frames[0]["type"] == "run.started"
        assert frames[-1]["type"] == "run.completed"
        assert "".join(f["data"]["content"] for f in frames if f["type"] == "message.delta") == (
            "echo: hello"
        )

        answers = await call("GET", messages, f"/v1/threads/{t}/messages", 200)
        assert [m["content"] for m in answers] == ["hello", "echo: hello"]
        runs = await call("GET", "/v1/threads/{thread_id}/runs", f"/v1/threads/{t}/runs", 200)
        assert [r["status"] for r in runs] == ["completed"]
        listed = await call("GET", "/v1/runs", "/v1/runs", 200)
        assert listed[0]["run_id"] == run
        await call("GET", "/v1/runs/{run_id}", f"/v1/runs/{run}", 200)
        await call("POST", "/v1/runs/{run_id}:cancel", f"/v1/runs/{run}:cancel", 200)
        await call("POST", "/v1/runs/{run_id}/cancel", f"/v1/runs/{run}/cancel", 200)
        await call("POST", "/v1/runs/{run_id}/retry", f"/v1/runs/{run}/retry", 409)
        # The console's files are package data, served from inside the binary.
        page = await call("GET", "/", "/", 200)
        assert "<html" in page.lower()
        script = await call("GET", "/console/{name}", "/console/app.js", 200)
        assert script == (ROOT / "runs" / "console" / "app.js").read_text(encoding="utf-8")
        await call(
            "POST", "/v1/runs/{run_id}/input", f"/v1/runs/{run}/input", 409, {"content": "x"}
        )
        tools = await call("GET", "/v1/tools", "/v1/tools?persona_id=default@1", 200)
        assert tools, tools

        # Routes this test does not drive one by one (added later) must at least be served:
        # one without an id answers something other than 404/405/500 to an empty body; one with
        # an id answers an unknown id without a 500.
        for method, route in sorted(source_routes() - exercised):
            path = re.sub(r"\{[^}]+\}", "0190b1e0-0000-7000-8000-000000000000", route)
            async with http.request(method, path, json={}, headers=auth) as response:
                refused = (500,) if "{" in route else (404, 405, 500)
                assert response.status not in refused, (method, route, response.status)
            exercised.add((method, route))
    assert exercised >= source_routes()

    tail = bare(binary, "tail", run, "--url", served.url, "--token", served.key, cwd=tmp_path)
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.rstrip().endswith("[completed]"), tail.stdout

    # Other processes on the same live log: admin appends, the auditors read, backup copies.
    org = bare(binary, "admin", "--db", "runlog.db", "create-org", "--name", "acme", cwd=tmp_path)
    assert org.returncode == 0, org.stderr
    keys = bare(binary, "admin", "--db", "runlog.db", "list-keys", cwd=tmp_path)
    assert keys.returncode == 0, keys.stderr
    assert "user=admin" in keys.stdout
    exported = bare(binary, "export", "--db", "runlog.db", "--run", run, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert [json.loads(x)["type"] for x in exported.stdout.splitlines()][-1] == "run.completed"
    backup = bare(binary, "backup", "--db", "runlog.db", "--to", "copy.db", cwd=tmp_path)
    assert backup.returncode == 0, backup.stderr
    assert "head position" in backup.stdout

    served.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await served.process.wait() == 0
    assert served.process.stdout is not None
    assert "runlog: shutting down" in (await served.process.stdout.read()).decode()

    for db in ("runlog.db", "copy.db"):
        verified = bare(binary, "verify", "--db", db, cwd=tmp_path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "hash chain intact" in verified.stdout
        rebuilt = bare(binary, "rebuild", "--check", "--db", db, cwd=tmp_path)
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    in_place = bare(binary, "rebuild", "--db", "runlog.db", cwd=tmp_path)
    assert in_place.returncode == 0, in_place.stderr
    # The same on two processes (a forked helper replays part of the projections).
    for check in ([], ["--check"]):
        two = bare(binary, "rebuild", *check, "--jobs", "2", "--db", "runlog.db", cwd=tmp_path)
        assert two.returncode == 0, two.stdout + two.stderr
        assert two.stdout.endswith(" (in 2 processes)\n"), two.stdout
    missing = bare(binary, "verify", "--db", "nothing.db", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no log at nothing.db" in missing.stderr


def test_packages_unpacked_at_first_import_load_from_the_binary(
    binary: Path, tmp_path: Path
) -> None:
    """The compiled libraries that start-up never loads are written out of the binary's
    runlog-deferred.zip when their package is first imported (scripts/runlog.spec): each
    such package must still import and work."""
    # The PostgreSQL backend: psycopg (libpq and the libraries of its wheel) and asyncpg.
    copied = bare(
        binary, "copy", "--from", "postgresql://u@127.0.0.1:1/x", "--to", "y.db", cwd=tmp_path
    )
    assert copied.returncode == 1, copied.stderr
    assert "cannot connect to PostgreSQL" in copied.stderr, copied.stderr
    assert "Connection refused" in copied.stderr, copied.stderr  # libpq's own words

    # The model and MCP SDKs (pydantic-core, jiter, rpds), cryptography and its cffi, and
    # standard library extension modules (a CJK codec, expat), imported as tool modules: a
    # module without TOOLS is refused once it has been imported. Importing anthropic asks
    # importlib.metadata for httpx2's version (its .dist-info is deferred too), and jsonschema
    # lists jsonschema_specifications' metaschema files, also written out of the zip.
    deferred = (
        "anthropic",
        "mcp",
        "jsonschema",
        "cryptography.hazmat.bindings._rust",
        "_cffi_backend",
        "encodings.shift_jis",
        "xml.parsers.expat",
    )
    for module in deferred:
        (tmp_path / "tools.toml").write_text(f'tool_modules = ["{module}"]\n')
        refused = bare(binary, "serve", "--config", "tools.toml", "--db", "t.db", cwd=tmp_path)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"tool module {module!r} must define TOOLS" in refused.stderr, refused.stderr


def source_routes() -> set[tuple[str, str]]:
    """The routes the app built from source serves: the binary must serve the same."""
    app = create_app(load_config(None, env={}, overrides={"db": "unused.db"}))
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
