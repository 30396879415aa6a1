"""SSE benchmark: catch-up throughput and live fan-out. A script, not a test.

    /tmp/venv/bin/python bench/sse.py

catch-up
    A 10,000-event run is built in-process (a bulk provider streaming ~10,000 deltas with
    coalescing off). A server subprocess (``server.py``) then serves it; this process reads it
    with an aiohttp client, ``after_seq=0&follow=0`` over TCP on 127.0.0.1, parsing every frame
    (id line, data JSON). Compared with a raw in-process ``store.read_stream`` loop over the same
    events in batches of 500, opened by this process on the same file while the server runs.
    The two are measured alternately, ``REPEATS`` times each, so both see the same machine.
    The ratio is the median of the ratios of each pair (HTTP / the raw read just before it):
    on a shared machine whose speed changes from one second to the next, a pair sees one
    speed, and the median of pairs is steadier than the ratio of the two medians (which the
    table also prints).

fan-out
    A fresh server subprocess (config: ``delta_coalesce_ms = 0``). 100 runs of the scripted
    provider with ``/slow SLOW_MS`` and a long message each append one delta every 19 ms
    (5,263 events/s offered in all, a little over the 5,000 a server must sustain, so that
    the rate measured is what the server delivers and not the offer itself); 10 SSE
    clients follow each run from ``after_seq=0`` (1,000 connections) from this process. The
    clients are plain asyncio protocols (one ``data_received`` callback per TCP read, one regex
    over the bytes, msgspec for the JSON) so the client side stays cheap. Latency is the
    client's receive time minus the event's ``created_at`` (stamped when the append is handed
    to the log writer; millisecond precision, so each sample is over-stated by up to 1 ms),
    for events stamped inside a 10 s window that starts 1 s after every client is attached.
    The runs are then cancelled, every stream ends with ``run.cancelled``, and events lost
    compares every client's seqs with its run's log (must be 1..last, no gap, no duplicate).

idle RSS
    Server subprocess VmRSS before and after opening N SSE connections that follow a run
    parked in ``waiting_for_input`` (no traffic), after a warm-up of a few connections.

profiling
    ``RUNLOG_BENCH_PROFILE=<dir>`` runs each single-process server under cProfile and writes
    ``<dir>/<log name>.prof`` when it stops (``fanout-server.prof`` for the fan-out); read it
    with ``pstats``. Profiled figures are slower than plain ones.

The last line is machine-readable: ``RESULT catchup_ratio=... fanout_p99_ms=... lost=...
rss_kb_per_conn=...``.

API (called by ``bench/all.py``)
    ``async def measure_catchup(events: int = 10_000, repeats: int = 21) -> dict[str, float]``
    runs the catch-up measurement alone in a temporary directory and returns ``catchup_ratio``
    (HTTP / raw, the median of pairs), ``http_eps``, ``raw_eps`` (medians), ``events`` and
    ``build_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import structlog
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eventstore import SQLiteEventStore  # noqa: E402
from runs.config import load_config  # noqa: E402
from runs.events import TERMINAL_RUN_EVENTS, run_stream  # noqa: E402
from runs.providers.base import ModelRequest, ProviderEvent, Stop, TextDelta, Usage  # noqa: E402
from server import RUNTIME, create_app  # noqa: E402

KEY = "rl_bench_admin_key_0123456789abcdefghijklmnop"
CATCHUP_EVENTS = 10_000
REPEATS = 21
RUNS = 100
CLIENTS_PER_RUN = 10
#: /slow for the scripted runs: 100 runs x one delta every 19 ms (paced, so a busy server
#: still offers the same rate) is 5,263 events/s offered.
SLOW_MS = 19
#: The fan-out's offered rate, events/s.
OFFERED = RUNS * 1000 / SLOW_MS
FANOUT_SECONDS = 10.0
SETTLE_SECONDS = 1.0
IDLE_CONNECTIONS = 1000
#: Seconds a client waits for its stream to open (the first ping).
OPEN_TIMEOUT = 30.0
TERMINAL = {t.encode() for t in TERMINAL_RUN_EVENTS}


class Frame(msgspec.Struct):
    seq: int
    type: str
    data: msgspec.Raw
    created_at: str


_decode = msgspec.json.Decoder(Frame).decode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and its child processes (the workers of ``runlog serve --workers N``)."""
    pids = [pid]
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            pids += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its children (workers)."""
    total = 0.0
    for one in process_tree(pid):
        fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (workers)."""
    total = 0
    for one in process_tree(pid):
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


_epoch_of_second: dict[str, float] = {}


def created_epoch(created_at: str) -> float:
    """``2024-01-01T00:00:00.123Z`` → seconds since the epoch (the second part cached)."""
    second = created_at[:19]
    base = _epoch_of_second.get(second)
    if base is None:
        base = _epoch_of_second[second] = datetime.fromisoformat(second + "+00:00").timestamp()
    return base + int(created_at[20:23]) / 1000


# -- the server subprocess ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def subprocess_server(
    argv: list[str],
    log: Path,
    *,
    key: str = KEY,
    ready: Callable[[], bool] | None = None,
    stop_timeout: float = 15.0,
    start_timeout: float = 30.0,
) -> AsyncIterator[tuple[str, int]]:
    """Start ``argv`` with ``--port <a free port>`` added (``key`` as the bootstrap API key),
    wait (at most ``start_timeout`` s) until ``/healthz`` answers 200 and ``ready()`` holds;
    yield the base URL and pid; stop it with SIGTERM (waiting ``stop_timeout`` s, so a profiled
    server can write its profile)."""
    port = free_port()
    env = {**os.environ, "RUNLOG_BOOTSTRAP_API_KEY": key, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + start_timeout
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{base}/healthz") as r:
                        if r.status == 200 and (ready is None or ready()):
                            break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
                await asyncio.sleep(0.05)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def server_process(
    db: str, config: str, log: Path, workers: int = 1
) -> AsyncIterator[tuple[str, int]]:
    """``runlog serve`` on ``db`` (with ``workers`` > 1: ``--workers``); yields its URL and
    pid (the parent's with workers), once every worker listens."""
    argv = [sys.executable, "-m", "runs", "--db", db, "--config", config]
    profile_dir = os.environ.get("RUNLOG_BENCH_PROFILE")
    if profile_dir and workers == 1:
        # cProfile writes the profile when the server returns from its SIGTERM shutdown.
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        out = Path(profile_dir) / f"{log.stem}.prof"
        argv[1:1] = ["-m", "cProfile", "-o", str(out)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    async with subprocess_server(
        argv, log, ready=lambda: log.read_text().count(" listening on ") >= workers
    ) as served:
        yield served


def write_config(path: Path, **values: Any) -> str:
    lines = [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in values.items()]
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return str(path)


async def start_run(session: aiohttp.ClientSession, base: str, content: str) -> str:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with session.post(f"{base}/v1/threads", json={"title": "b"}, headers=headers) as r:
        assert r.status == 201, await r.text()
        thread_id = (await r.json())["id"]
    url = f"{base}/v1/threads/{thread_id}"
    async with session.post(f"{url}/messages", json={"content": content}, headers=headers) as r:
        assert r.status == 201, await r.text()
    async with session.post(f"{url}/runs", json={}, headers=headers) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["run_id"])


# -- catch-up -------------------------------------------------------------------------------


class BulkProvider:
    """Streams ``n`` deltas as fast as the executor takes them."""

    def __init__(self, n: int) -> None:
        self.n = n

    async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        for i in range(self.n):
            yield TextDelta(f"{i % 10000:04d}")
        yield Usage(input_tokens=1, output_tokens=self.n)
        yield Stop("end_turn")


async def build_catchup_run(db: str, size: int = CATCHUP_EVENTS) -> tuple[str, int]:
    """A completed run of ~``size`` events, built through the real app in-process."""
    config = load_config(
        None, env={}, overrides={"db": db, "delta_coalesce_ms": 0, "secret_key": "bench"}
    )
    app = create_app(
        config,
        env={"RUNLOG_BOOTSTRAP_API_KEY": KEY},
        provider_for=lambda route: BulkProvider(size - 2),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        async with aiohttp.ClientSession() as session:
            run_id = await start_run(session, f"http://127.0.0.1:{port}", "bulk")
        store = app[RUNTIME].store
        events = store.subscribe(run_stream(run_id), 0)
        try:
            async for event in events:
                if event.type in TERMINAL_RUN_EVENTS:
                    assert event.type == "run.completed", event
                    break
        finally:
            await events.aclose()
        last = await store.last_seq(run_stream(run_id))
    finally:
        await runner.cleanup()
    return run_id, last


def parse_sse_body(buffer: bytes) -> tuple[list[Frame], bytes]:
    """Complete frames in ``buffer`` (de-chunked SSE) and the unparsed rest."""
    frames: list[Frame] = []
    end = buffer.rfind(b"\n\n")
    if end < 0:
        return frames, buffer
    for block in buffer[:end].split(b"\n\n"):
        if block.startswith(b":"):
            continue
        id_line, _, data_line = block.partition(b"\n")
        frame = _decode(data_line[6:])
        assert id_line == b"id: %d" % frame.seq
        frames.append(frame)
    return frames, buffer[end + 2 :]


async def http_catchup(session: aiohttp.ClientSession, base: str, run_id: str, last: int) -> float:
    url = f"{base}/v1/runs/{run_id}/events"
    started = time.perf_counter()
    count = 0
    expected = 1
    rest = b""
    async with session.get(
        url, params={"after_seq": "0", "follow": "0"}, headers={"Authorization": f"Bearer {KEY}"}
    ) as response:
        assert response.status == 200
        async for chunk in response.content.iter_chunked(1 << 16):
            frames, rest = parse_sse_body(rest + chunk)
            for frame in frames:
                assert frame.seq == expected
                expected += 1
            count += len(frames)
    elapsed = time.perf_counter() - started
    assert count == last, (count, last)
    return count / elapsed


async def raw_catchup(store: SQLiteEventStore, run_id: str, last: int) -> float:
    stream = run_stream(run_id)
    started = time.perf_counter()
    cursor, count = 0, 0
    while True:
        batch = await store.read_stream(stream, cursor, 500)
        count += len(batch)
        if len(batch) < 500:
            break
        cursor = batch[-1].seq
    elapsed = time.perf_counter() - started
    assert count == last
    return count / elapsed


async def catchup(tmp: Path, size: int = CATCHUP_EVENTS, repeats: int = REPEATS) -> dict[str, Any]:
    db = str(tmp / "catchup.db")
    t0 = time.perf_counter()
    run_id, last = await build_catchup_run(db, size)
    build_s = time.perf_counter() - t0
    config = write_config(tmp / "catchup.toml", secret_key="bench")
    raw: list[float] = []
    http: list[float] = []
    async with (
        server_process(db, config, tmp / "catchup-server.log") as (base, _),
        aiohttp.ClientSession() as session,
    ):
        store = await SQLiteEventStore.open(db)
        try:
            await raw_catchup(store, run_id, last)  # warm up both paths and the page cache
            await http_catchup(session, base, run_id, last)
            # Alternate the two so both see the same machine (other load comes and goes).
            for _ in range(repeats):
                raw.append(await raw_catchup(store, run_id, last))
                http.append(await http_catchup(session, base, run_id, last))
        finally:
            await store.close()
    return {
        "events": last,
        "build_s": build_s,
        "http": statistics.median(http),
        "raw": statistics.median(raw),
        "ratio": statistics.median(h / r for h, r in zip(http, raw, strict=True)),
    }


async def measure_catchup(events: int = CATCHUP_EVENTS, repeats: int = REPEATS) -> dict[str, float]:
    """The catch-up measurement alone (see the module's docstring), for the one-table runner."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="runlog-bench-sse-") as tmp_dir:
        c = await catchup(Path(tmp_dir), events, repeats)
    return {
        "catchup_ratio": c["ratio"],
        "http_eps": c["http"],
        "raw_eps": c["raw"],
        "events": c["events"],
        "build_s": c["build_s"],
    }


# -- fan-out ----------------------------------------------------------------------------------

_FRAME = re.compile(rb"id: (\d+)\ndata: ([^\n]*)\n\n")


class SseProtocol(asyncio.Protocol):
    """One SSE client on a raw socket: the request, then frames parsed as bytes arrive.

    aiohttp writes each frame (or batch of frames) as one HTTP chunk, so the regex over the
    raw bytes finds every whole frame and skips the chunk-size lines between them."""

    def __init__(self, request: bytes, latencies: list[float] | None) -> None:
        self.request = request
        self.latencies = latencies
        #: When the stream opened (its first ``: ping``): only events stamped after it count
        #: for latency; older ones are catch-up, not live delivery.
        self.since = float("inf")
        self.buffer = b""
        self.head = True
        self.seqs: list[int] = []
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer + data
        if self.head:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            status = buffer[: buffer.find(b"\r\n")]
            if b" 200 " not in status:
                self._finish(RuntimeError(status.decode()))
                return
            self.head = False
            buffer = buffer[end + 4 :]
        if not self.opened.done() and b": ping\n\n" in buffer:
            self.since = now
            self.opened.set_result(None)
        consumed = 0
        latencies = self.latencies
        for match in _FRAME.finditer(buffer):
            consumed = match.end()
            frame = _decode(match.group(2))
            self.seqs.append(frame.seq)
            if latencies is not None:
                created = created_epoch(frame.created_at)
                if created >= self.since:
                    latencies.append(now - created)
            if frame.type.encode() in TERMINAL:
                self._finish(None)
        self.buffer = buffer[consumed:] if consumed else buffer
        if len(self.buffer) > 1 << 20:
            self._finish(RuntimeError("unparsed bytes piling up"))

    def _finish(self, error: BaseException | None) -> None:
        if not self.finished.done():
            if error is None:
                self.finished.set_result(None)
            else:
                self.finished.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionResetError("closed before the ping"))
        if not self.finished.done():
            self.finished.set_result(None)


def sse_request(run_id: str, after_seq: int = 0) -> bytes:
    return (
        f"GET /v1/runs/{run_id}/events?after_seq={after_seq} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()


async def open_clients(
    port: int, requests: list[bytes], latencies: list[float] | None
) -> list[SseProtocol]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(64)

    async def one(request: bytes) -> SseProtocol:
        async with gate:
            _, protocol = await loop.create_connection(
                lambda: SseProtocol(request, latencies), "127.0.0.1", port
            )
            await asyncio.wait_for(protocol.opened, OPEN_TIMEOUT)
            return protocol

    return await asyncio.gather(*(one(r) for r in requests))


async def log_frames(session: aiohttp.ClientSession, base: str, run_id: str) -> list[Frame]:
    async with session.get(
        f"{base}/v1/runs/{run_id}/events",
        params={"follow": "0"},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as response:
        frames, _ = parse_sse_body(await response.read())
    return frames


async def idle_rss(session: aiohttp.ClientSession, base: str, port: int, pid: int) -> float:
    run_id = await start_run(session, base, "/ask are you there?")
    headers = {"Authorization": f"Bearer {KEY}"}
    deadline = time.monotonic() + 10
    while True:  # wait until the run is parked (no more traffic on its stream)
        async with session.get(f"{base}/v1/runs/{run_id}", headers=headers) as r:
            if (await r.json())["status"] == "waiting_for_input":
                break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    last = (await log_frames(session, base, run_id))[-1].seq
    request = sse_request(run_id, last)
    warm = await open_clients(port, [request] * 20, None)
    for client in warm:
        client._finish(None)
    await asyncio.sleep(0.3)
    before = rss_kb(pid)
    clients = await open_clients(port, [request] * IDLE_CONNECTIONS, None)
    await asyncio.sleep(0.5)  # let the server settle; nothing is in flight on idle streams
    after = rss_kb(pid)
    for client in clients:
        client._finish(None)
    async with session.post(f"{base}/v1/runs/{run_id}:cancel", headers=headers) as r:
        assert r.status == 200
    return (after - before) / IDLE_CONNECTIONS


async def fanout(
    tmp: Path, db: str | None = None, workers: int = 1, idle: bool = True, name: str = "fanout"
) -> dict[str, Any]:
    """The fan-out measurement against a fresh server on ``db`` (default: a new SQLite file)
    with ``workers`` processes; ``idle`` also measures the RSS of idle connections. (With
    several workers a cancel may reach a worker that does not drive the run: it appends the
    cancel itself, and the driver's next append fails its seq check and stops.)"""
    db = db or str(tmp / f"{name}.db")
    config = write_config(
        tmp / f"{name}.toml",
        secret_key="bench",
        delta_coalesce_ms=0,
        max_live_runs_per_org=RUNS + 10,
    )
    # Long enough to keep appending through the measured window (4 characters per delta),
    # however long the runs' creation and the 1,000 clients' attaching take before it: the
    # runs are cancelled after it.
    text = ("x" * 79 + " ") * int((FANOUT_SECONDS + 60) * 1000 / SLOW_MS * 4 / 80)
    async with (
        server_process(db, config, tmp / f"{name}-server.log", workers) as (base, pid),
        aiohttp.ClientSession() as session,
    ):
        port = int(base.rsplit(":", 1)[1])
        rss_per_conn = await idle_rss(session, base, port, pid) if idle else 0.0
        rss_start = rss_kb(pid)
        # A connection per request, as from many users: with several workers the kernel
        # spreads them, so each worker drives its share of the runs (a run is driven by the
        # process that created it), rather than one worker driving all of them.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as creator:
            run_ids = [
                await start_run(creator, base, f"/slow {SLOW_MS}\n{text}") for _ in range(RUNS)
            ]
        latencies: list[float] = []
        requests = [sse_request(r) for r in run_ids for _ in range(CLIENTS_PER_RUN)]
        clients = await open_clients(port, requests, latencies)
        # Measure from once every client is attached and caught up: steady live traffic.
        await asyncio.sleep(SETTLE_SECONDS)
        latencies.clear()
        window_start = time.time()
        cpu_start = os.times()
        server_cpu_start = cpu_seconds(pid)
        await asyncio.sleep(FANOUT_SECONDS)
        server_cpu = cpu_seconds(pid) - server_cpu_start
        window = list(latencies)
        window_end = time.time()
        cpu = os.times()
        rss_peak = rss_kb(pid)
        client_cpu = (cpu.user - cpu_start.user) + (cpu.system - cpu_start.system)
        for run_id in run_ids:  # end the runs now rather than wait for the text to run out
            async with session.post(
                f"{base}/v1/runs/{run_id}:cancel", headers={"Authorization": f"Bearer {KEY}"}
            ) as r:
                assert r.status in (200, 409), await r.text()
        await asyncio.wait_for(asyncio.gather(*(c.finished for c in clients)), 120)
        lost = dup = 0
        events = appended_in_window = 0
        for i, run_id in enumerate(run_ids):
            frames = await log_frames(session, base, run_id)
            log = [frame.seq for frame in frames]
            assert log == list(range(1, len(log) + 1))
            appended_in_window += sum(
                window_start <= created_epoch(frame.created_at) < window_end for frame in frames
            )
            for client in clients[i * CLIENTS_PER_RUN : (i + 1) * CLIENTS_PER_RUN]:
                got = client.seqs
                lost += len(set(log) - set(got))
                dup += len(got) - len(set(got))
            events += len(log)
    window.sort()
    return {
        "clients": len(clients),
        "samples": len(window),
        "rate": appended_in_window / (window_end - window_start),
        "p50": 1000 * window[len(window) // 2],
        "p99": 1000 * window[int(len(window) * 0.99)],
        "max": 1000 * window[-1],
        "lost": lost,
        "dup": dup,
        "client_cpu": client_cpu / (window_end - window_start),
        "server_cpu": server_cpu / (window_end - window_start),
        "rss_per_conn": rss_per_conn,
        "rss_start": rss_start,
        "rss_peak": rss_peak,
        "events": events,
    }


def print_rows(
    rows: list[tuple[str, str, str]], load_before: float, started: float, value_width: int
) -> None:
    """A bench's table (name, value, note), closed by the machine's load before and after and
    the wall time since ``started`` (``time.perf_counter``)."""
    rows = [
        *rows,
        (
            "machine load average (1 min) before / after",
            f"{load_before:.2f} / {os.getloadavg()[0]:.2f}",
            f"{os.cpu_count()} cores",
        ),
        ("bench wall time", f"{time.perf_counter() - started:.0f} s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>{value_width}}  {note}")


async def main() -> None:
    # The in-process app (catch-up build) logs every request: keep the table readable.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="runlog-bench-sse-") as tmp_dir:
        tmp = Path(tmp_dir)
        c = await catchup(tmp)
        f = await fanout(tmp)
    ratio = c["ratio"]
    rows = [
        ("catch-up events in the run", f"{c['events']:,}", ""),
        ("catch-up build (in-process, durable appends)", f"{c['build_s']:.1f} s", ""),
        (
            "catch-up HTTP SSE after_seq=0&follow=0",
            f"{c['http']:,.0f} ev/s",
            f"median of {REPEATS}",
        ),
        ("catch-up raw read_stream (500/batch)", f"{c['raw']:,.0f} ev/s", f"median of {REPEATS}"),
        ("catch-up ratio, median of pairs", f"{ratio:.2f}", "target >= 0.8"),
        ("catch-up ratio of the medians", f"{c['http'] / c['raw']:.2f}", ""),
        ("fan-out clients / runs", f"{f['clients']} / {RUNS}", ""),
        ("fan-out append rate (measured)", f"{f['rate']:,.0f} ev/s", "target 5,000"),
        ("fan-out rate offered", f"{OFFERED:,.0f} ev/s", f"/slow {SLOW_MS}, {RUNS} runs"),
        ("fan-out frames delivered in window", f"{f['samples']:,}", f"{FANOUT_SECONDS:.0f} s"),
        ("fan-out latency p50", f"{f['p50']:.1f} ms", "created_at -> client"),
        ("fan-out latency p99", f"{f['p99']:.1f} ms", "target <= 100"),
        ("fan-out latency max", f"{f['max']:.1f} ms", ""),
        ("fan-out events lost / duplicated", f"{f['lost']} / {f['dup']}", "target 0"),
        (
            "fan-out server / client process CPU",
            f"{f['server_cpu']:.2f} / {f['client_cpu']:.2f}",
            "cores",
        ),
        ("server RSS at start / during fan-out", f"{f['rss_start']:,} / {f['rss_peak']:,} kB", ""),
        ("server RSS per idle SSE connection", f"{f['rss_per_conn']:.1f} kB", "subprocess"),
    ]
    print_rows(rows, load_before, started, value_width=22)
    print(
        f"RESULT catchup_ratio={ratio:.2f} fanout_p99_ms={f['p99']:.0f} lost={f['lost']}"
        f" rss_kb_per_conn={f['rss_per_conn']:.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
