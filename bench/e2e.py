"""End-to-end benchmark: what a user of the HTTP API gets, against the HTTP ceiling of this machine.

    .venv/bin/python bench/e2e.py [--clients 1,20,100] [--seconds 6]

method
    C concurrent clients (one ``aiohttp.ClientSession`` in this process, C connections) each
    loop: ``POST /v1/threads`` → ``POST /v1/threads/{id}/messages`` → ``POST
    /v1/threads/{id}/runs`` (the default ``scripted`` route, which echoes the message) → ``GET
    /v1/runs/{id}/events`` (SSE, ``after_seq=0``, following) read until ``run.completed``.
    Per run the client records create→first ``message.delta`` frame and create→``run.completed``
    frame ("create" = just before the run's POST is sent). runs/s = runs completed / wall time.

server under test
    A real subprocess, ``python -m runs serve`` on a fresh SQLite file (defaults but for
    ``max_live_runs_per_org``, raised so C = 100 is not throttled), the key from
    ``RUNLOG_BOOTSTRAP_API_KEY``. Its CPU time per run is the growth of ``utime + stime`` in
    ``/proc/<pid>/stat`` over the measured window divided by the runs completed in it.

reference (the same run)
    A null server: another subprocess (this file with ``--null-server``), a tiny aiohttp app that
    answers the same four requests with canned bodies — the very bytes the real server sent in
    the warm-up, the SSE body included (written in one piece after the ``: ping``). The same
    client against it gives the HTTP ceiling of this machine (at C = 20 the client fills a core
    of its own). ratio = runs/s of the real server / runs/s of the null server.

    The two are measured alternately (``rounds`` windows of ``seconds / rounds`` each, after a
    warm-up of both), so both see the same machine; figures are sums over the windows, latency
    percentiles over every run of the real server.

API (called by ``bench/all.py``)
    ``async def measure(clients: int, seconds: float, *, rounds: int = 2) -> dict[str, float]``
    returns ``runs_s``, ``null_runs_s``, ``ratio``, ``cpu_ms_per_run`` (and its parts:
    ``main_cpu_ms_per_run``, the event loop's thread, and ``threads_cpu_ms_per_run``, the
    others, the log writer's above all), ``null_cpu_ms_per_run``,
    ``first_delta_p50_ms``, ``first_delta_p99_ms``, ``completed_p50_ms``, ``completed_p99_ms``
    ``runs`` (the real server's run count) and ``clients``.

profiling
    ``RUNLOG_BENCH_PROFILE=<dir>`` runs the server under test inside this file
    (``--profiled-server``): cProfile with the main thread's CPU clock (``time.thread_time``,
    so time spent waiting for a core on a busy machine is not counted), switched on for the
    measured windows only (SIGUSR1 / SIGUSR2) and written to ``<dir>/e2e-c<C>.prof``; read it
    with ``pstats``. The table then also prints the server's CPU per run by thread (from
    ``/proc/<pid>/task``). Profiled figures are slower than plain ones: compare them only
    with each other.

The last line is machine-readable: ``RESULT e2e_ratio=... cpu_ms_per_run=...
first_delta_p99_ms=... runs_s=...`` (figures of C = 20, or of the largest C given below 20).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import json
import os
import pstats
import resource
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from sse import cpu_seconds, subprocess_server

THIS = Path(__file__).resolve()
ROOT = THIS.parent.parent
KEY = "rl_bench_e2e_key_0123456789abcdefghijklmnopqrs"
MESSAGE = "hello, how are you today? tell me something about the weather"
WARMUP_SECONDS = 1.0
DELTA = b'"type":"message.delta"'
COMPLETED = b'"type":"run.completed"'
ENDED = (b'"type":"run.failed"', b'"type":"run.cancelled"')


def cpu_by_thread(pid: int) -> dict[str, float]:
    """User and system CPU seconds of a process's threads so far: the main thread (the event
    loop) and the others summed (log writer, reader connections)."""
    totals: collections.Counter[str] = collections.Counter()
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rpartition(")")[2].split()
            who = "main" if task.name == str(pid) else "threads"
            totals[f"{who} user"] += int(fields[11]) / tick
            totals[f"{who} sys"] += int(fields[12]) / tick
    return dict(totals)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# -- the servers ----------------------------------------------------------------------------


def real_server_argv(tmp: Path, clients: int) -> list[str]:
    config = tmp / "e2e.toml"
    config.write_text(f"max_live_runs_per_org = {max(100, 2 * clients)}\n")
    serve = ["serve", "--db", str(tmp / "e2e.db"), "--config", str(config)]
    profile_dir = os.environ.get("RUNLOG_BENCH_PROFILE")
    if profile_dir:
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        out = Path(profile_dir) / f"e2e-c{clients}.prof"
        out.unlink(missing_ok=True)
        return [sys.executable, str(THIS), "--profiled-server", str(out), *serve]
    return [sys.executable, "-m", "runs", *serve]


def serve_profiled(out: str, argv: list[str]) -> int:
    """``runlog`` with ``argv``, profiled between SIGUSR1 and SIGUSR2 (main thread CPU time)."""
    sys.path.insert(0, str(ROOT))
    from runs.cli import main as runlog

    profiler = cProfile.Profile(time.thread_time)
    signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())

    def stop(*_: object) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR2, stop)
    return runlog(argv)


def null_app(bodies: dict[str, str]) -> web.Application:
    """Canned answers to the loop's four requests (and ``/healthz``)."""
    thread = bodies["thread"].encode()
    message = bodies["message"].encode()
    run = bodies["run"].encode()
    events = bodies["events"].encode()

    async def created(body: bytes) -> web.Response:
        return web.Response(body=body, status=201, content_type="application/json")

    async def create_thread(request: web.Request) -> web.Response:
        await request.read()
        return await created(thread)

    async def add_message(request: web.Request) -> web.Response:
        await request.read()
        return await created(message)

    async def create_run(request: web.Request) -> web.Response:
        await request.read()
        return await created(run)

    async def run_events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await response.write(b": ping\n\n")
        await response.write(events)
        await response.write_eof()
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/threads", create_thread)
    app.router.add_post("/v1/threads/{thread_id}/messages", add_message)
    app.router.add_post("/v1/threads/{thread_id}/runs", create_run)
    app.router.add_get("/v1/runs/{run_id}/events", run_events)
    return app


def serve_null(bodies_file: str, port: int) -> None:
    bodies = json.loads(Path(bodies_file).read_text())
    web.run_app(null_app(bodies), host="127.0.0.1", port=port, access_log=None, print=None)


# -- the client -----------------------------------------------------------------------------


class Samples:
    def __init__(self) -> None:
        self.runs = 0
        self.first_delta: list[float] = []
        self.completed: list[float] = []
        self.bodies: dict[str, str] = {}


async def one_run(session: aiohttp.ClientSession, base: str, samples: Samples) -> None:
    """The loop's four requests; latencies into ``samples``."""
    headers = {"Authorization": f"Bearer {KEY}"}
    async with session.post(f"{base}/v1/threads", json={"title": "e2e"}, headers=headers) as r:
        thread_body = await r.read()
        assert r.status == 201, thread_body
    thread_id = json.loads(thread_body)["id"]
    url = f"{base}/v1/threads/{thread_id}"
    async with session.post(f"{url}/messages", json={"content": MESSAGE}, headers=headers) as r:
        message_body = await r.read()
        assert r.status == 201, message_body
    created = time.perf_counter()
    async with session.post(f"{url}/runs", json={}, headers=headers) as r:
        run_body = await r.read()
        assert r.status == 201, run_body
    run_id = json.loads(run_body)["run_id"]
    first_delta = completed = None
    seen = bytearray()
    async with session.get(
        f"{base}/v1/runs/{run_id}/events", params={"after_seq": "0"}, headers=headers
    ) as r:
        assert r.status == 200, await r.text()
        async for chunk in r.content.iter_any():
            now = time.perf_counter()
            start = max(0, len(seen) - len(COMPLETED))
            seen += chunk
            window = bytes(seen[start:]) if start else bytes(seen)
            if first_delta is None and DELTA in window:
                first_delta = now - created
            if COMPLETED in window:
                completed = now - created
                break
            if any(end in window for end in ENDED):
                raise AssertionError(f"the run did not complete: {bytes(seen)[-500:]!r}")
    assert completed is not None, bytes(seen)[-500:]
    samples.runs += 1
    samples.first_delta.append(first_delta if first_delta is not None else completed)
    samples.completed.append(completed)
    if not samples.bodies:
        samples.bodies = {
            "thread": thread_body.decode(),
            "message": message_body.decode(),
            "run": run_body.decode(),
            "events": bytes(seen).removeprefix(b": ping\n\n").decode(),
        }


async def load(base: str, clients: int, seconds: float, pid: int) -> tuple[Samples, float, float]:
    """``clients`` loops for ``seconds`` (runs started after that are not begun): the samples,
    the wall time until the last run ended and the server's CPU seconds meanwhile."""
    samples = Samples()
    connector = aiohttp.TCPConnector(limit=clients * 2 + 10)
    async with aiohttp.ClientSession(connector=connector) as session:
        cpu_start = cpu_seconds(pid)
        started = time.perf_counter()
        deadline = started + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                await one_run(session, base, samples)

        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_start
    return samples, wall, cpu


async def measure(clients: int, seconds: float, *, rounds: int = 2) -> dict[str, float]:
    """One row of the table: the real server and the null server, ``rounds`` alternating
    windows of ``seconds / rounds`` each (see the module's docstring)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    with tempfile.TemporaryDirectory(prefix="runlog-bench-e2e-") as tmp_dir:
        tmp = Path(tmp_dir)
        async with subprocess_server(
            real_server_argv(tmp, clients), tmp / "server.log", key=KEY, stop_timeout=60
        ) as (
            base,
            pid,
        ):
            warm, _, _ = await load(base, clients, WARMUP_SECONDS, pid)
            bodies = tmp / "bodies.json"
            bodies.write_text(json.dumps(warm.bodies))
            null_argv = [sys.executable, str(THIS), "--null-server", str(bodies)]
            async with subprocess_server(null_argv, tmp / "null.log", key=KEY, stop_timeout=60) as (
                null_base,
                null_pid,
            ):
                await load(null_base, clients, WARMUP_SECONDS, null_pid)
                real = Samples()
                real_wall = real_cpu = null_wall = null_cpu = 0.0
                null_runs = 0
                profiling = bool(os.environ.get("RUNLOG_BENCH_PROFILE"))
                threads_start = cpu_by_thread(pid)
                if profiling:
                    os.kill(pid, signal.SIGUSR1)
                for _ in range(rounds):
                    s, wall, cpu = await load(base, clients, seconds / rounds, pid)
                    real.runs += s.runs
                    real.first_delta += s.first_delta
                    real.completed += s.completed
                    real_wall += wall
                    real_cpu += cpu
                    s, wall, cpu = await load(null_base, clients, seconds / rounds, null_pid)
                    null_runs += s.runs
                    null_wall += wall
                    null_cpu += cpu
                if profiling:
                    os.kill(pid, signal.SIGUSR2)
                threads = cpu_by_thread(pid)
    by_thread = {
        name: 1000 * (seconds - threads_start.get(name, 0.0)) / real.runs
        for name, seconds in threads.items()
        if seconds - threads_start.get(name, 0.0) > 0
    }
    if profiling:
        profile = Path(os.environ["RUNLOG_BENCH_PROFILE"]) / f"e2e-c{clients}.prof"
        for _ in range(50):  # the server writes it on SIGUSR2
            if profile.exists():
                break
            await asyncio.sleep(0.1)
        calls = pstats.Stats(str(profile)).total_calls / real.runs  # type: ignore[attr-defined]
        print(
            f"C = {clients}: server main-thread Python calls per run {calls:,.0f}", file=sys.stderr
        )
    cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(by_thread.items()))
    print(f"C = {clients}: server CPU ms/run by thread: {cpu}", file=sys.stderr)
    runs_s = real.runs / real_wall
    null_runs_s = null_runs / null_wall
    return {
        "clients": clients,
        "runs": real.runs,
        "runs_s": runs_s,
        "null_runs_s": null_runs_s,
        "ratio": runs_s / null_runs_s,
        "cpu_ms_per_run": 1000 * real_cpu / real.runs,
        "main_cpu_ms_per_run": by_thread.get("main user", 0.0) + by_thread.get("main sys", 0.0),
        "threads_cpu_ms_per_run": (
            by_thread.get("threads user", 0.0) + by_thread.get("threads sys", 0.0)
        ),
        "null_cpu_ms_per_run": 1000 * null_cpu / null_runs,
        "first_delta_p50_ms": 1000 * statistics.median(real.first_delta),
        "first_delta_p99_ms": 1000 * percentile(real.first_delta, 0.99),
        "completed_p50_ms": 1000 * statistics.median(real.completed),
        "completed_p99_ms": 1000 * percentile(real.completed, 0.99),
    }


def print_table(rows: list[dict[str, float]]) -> None:
    header = (
        "clients",
        "runs/s",
        "null runs/s",
        "ratio",
        "CPU ms/run",
        "null CPU ms/run",
        "1st delta p50/p99 ms",
        "completed p50/p99 ms",
    )
    cells = [
        (
            f"{r['clients']:.0f}",
            f"{r['runs_s']:,.0f}",
            f"{r['null_runs_s']:,.0f}",
            f"{r['ratio']:.2f}",
            f"{r['cpu_ms_per_run']:.2f}",
            f"{r['null_cpu_ms_per_run']:.2f}",
            f"{r['first_delta_p50_ms']:.1f} / {r['first_delta_p99_ms']:.1f}",
            f"{r['completed_p50_ms']:.1f} / {r['completed_p99_ms']:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    for line in [header, tuple("-" * w for w in widths), *cells]:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    print(
        f"targets at C = 20: ratio >= 0.7, CPU <= 1.5 ms/run, 1st delta p99 < 50 ms;"
        f" load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )


async def main(args: argparse.Namespace) -> None:
    rows = []
    for clients in args.clients:
        rows.append(await measure(clients, args.seconds, rounds=args.rounds))
    print_table(rows)
    pick = [r for r in rows if r["clients"] <= 20]
    row = max(pick, key=lambda r: r["clients"]) if pick else rows[0]
    print(
        f"RESULT e2e_ratio={row['ratio']:.2f} cpu_ms_per_run={row['cpu_ms_per_run']:.2f}"
        f" first_delta_p99_ms={row['first_delta_p99_ms']:.1f} runs_s={row['runs_s']:.0f}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--clients",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[1, 20, 100],
        help="comma-separated client counts (default 1,20,100)",
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per C")
    parser.add_argument("--rounds", type=int, default=2, help="alternating windows per C")
    parser.add_argument("--null-server", metavar="BODIES", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--profiled-server"]:
        raise SystemExit(serve_profiled(sys.argv[2], sys.argv[3:]))
    arguments = parse_args()
    if arguments.null_server:
        serve_null(arguments.null_server, arguments.port)
    else:
        asyncio.run(main(arguments))
