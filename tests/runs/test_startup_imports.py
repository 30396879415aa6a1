"""What ``runlog serve`` on a SQLite file has done once it answers ``/readyz``: start-up time is
mostly imports (README.md, "Deploy"), so the modules that only some requests or another backend
need must still be absent then, and aiohttp's client must not have read the CA store yet
(runs/client_tls.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import uvloop

from runs.cli import run_server
from tests.durability.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]

# Runs `runlog serve` in this interpreter and, once /readyz answers 200, prints as JSON the names
# of the imported modules, how many CA certificates aiohttp's default client context holds, the
# state of the cyclic garbage collector and the class of the event loop, then stops the server
# the way systemd does (SIGTERM).
PROBE = """
import gc, http.client, json, os, signal, sys, threading, time

def probe(port):
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        time.sleep(0.02)
    import aiohttp.connector
    ca = aiohttp.connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"]
    state = {"modules": sorted(sys.modules), "ca": ca}
    state["gc"] = {
        "enabled": gc.isenabled(),
        "frozen": gc.get_freeze_count(),
        "threshold": gc.get_threshold(),
    }
    # The main thread's event loop, from the frame of runs.cli.run_server that runs it.
    frame = sys._current_frames()[threading.main_thread().ident]
    while frame is not None and frame.f_code.co_name != "run_server":
        frame = frame.f_back
    loop = frame.f_locals["runner"].get_loop() if frame is not None else None
    state["loop"] = f"{type(loop).__module__}.{type(loop).__qualname__}"
    print("READY " + json.dumps(state), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=probe, args=(int(sys.argv[2]),), daemon=True).start()
from runs.cli import main
sys.exit(main(["serve", "--db", sys.argv[1], "--port", sys.argv[2]]))
"""


@pytest.fixture(scope="module")
def state_when_ready(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the probe saw of one started server, shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("startup")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "runlog.db"), str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("READY "))
    state: dict[str, Any] = json.loads(line.removeprefix("READY "))
    return state


def test_a_sqlite_server_is_ready_without_the_modules_it_does_not_need(
    state_when_ready: dict[str, Any],
) -> None:
    state = state_when_ready
    modules = set(state["modules"])
    assert "server" in modules  # the probe did see a started server
    unneeded = {
        # the PostgreSQL backend and its drivers (eventstore/backends.py)
        "eventstore.postgres",
        "psycopg",
        "asyncpg",
        # anchors' signing keys (runs/anchors.py), the model SDK, the API document
        "cryptography",
        "anthropic",
        "runs.openapi",
        # the binary unpacks these packages' libraries at their first import only
        # (scripts/runlog.spec, DEFERRED)
        "_cffi_backend",
        "pydantic_core",
        "jiter",
        "rpds",
    }
    assert not modules & unneeded, sorted(modules & unneeded)
    assert state["ca"] == 0


def test_the_garbage_collector_is_on_once_ready_with_start_up_objects_frozen(
    state_when_ready: dict[str, Any],
) -> None:
    """``runlog serve`` holds the collector off while it starts (runs/cli.py, ``main``): it must
    be on again once the server answers, with what start-up made frozen out of its reach."""
    state = state_when_ready
    assert state["gc"]["enabled"] is True
    assert state["gc"]["frozen"] > 10_000  # the modules, the app, the store
    assert state["gc"]["threshold"] == [10_000, 10, 10]  # fewer walks of the runs in flight


def test_the_server_runs_on_uvloop(state_when_ready: dict[str, Any]) -> None:
    """``runlog serve`` runs its app on uvloop's event loop (runs/cli.py, ``run_server``)."""
    assert state_when_ready["loop"] == "uvloop.Loop"


def test_run_server_gives_the_coroutine_uvloops_loop_and_returns_its_result() -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def serve() -> int:
        seen.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return 3

    assert run_server(serve()) == 3
    assert isinstance(seen[0], uvloop.Loop)
    assert seen[0].is_closed()  # the loop is closed when the coroutine is done
