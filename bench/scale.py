"""Several processes on one PostgreSQL log. A script, not a test.

    .venv/bin/python bench/scale.py    # RUNLOG_BENCH_PG_URL: an admin URL (default local)

Everything runs in fresh databases made for the run and dropped after it.

append scale
    Writer processes (this script started again with ``--appender``), each with its own
    ``PostgresEventStore`` and 50 tasks appending one event at a time to streams of their own,
    all starting at one instant given once every one has opened its store, and stopping
    ``APPEND_SECONDS`` later. Events committed
    per second by 1 process and by 2 processes at once, alternated ``REPEATS`` times (medians),
    so both see the same machine. Every process serialises on the log's head once per batch;
    the ratio says how much a second process adds.

cross-process latency
    A writer process appends ``XPROC_RATE`` events/s (a tick every 10 ms of concurrent
    single-event appends), each carrying its wall-clock send time; this process follows the
    stream with ``subscribe`` on its own store, which hears of the commits only through
    ``LISTEN``/``NOTIFY`` (eventstore/pg_listen.py). Latency is receive time minus send time:
    the writer's group commit, the notification and the follower's read of the log.
    ``XPROC_SECONDS`` of traffic after a second of warm-up.

fan-out
    bench/sse.py's fan-out (100 scripted runs, ``/slow`` deltas at 5,263 events/s offered,
    1,000 SSE clients from ``after_seq=0``, latency from ``created_at`` to the client, events
    lost or duplicated checked against the log) against ``runlog serve --workers 1`` and
    ``--workers 2`` on PostgreSQL. With 2 workers, connections (runs and SSE clients) are
    spread over both by the kernel, so most followers read runs driven by the other worker.

The last line is machine-readable: ``RESULT xproc_p99_ms=... fanout2_eps=... fanout2_p99_ms=...
lost=... append_scale=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench.sse  # noqa: E402
from bench.pg import bench_database  # noqa: E402
from bench.sse import fanout, print_rows  # noqa: E402
from eventstore import NewEvent  # noqa: E402
from eventstore.postgres import PostgresEventStore  # noqa: E402

APPENDERS = 50
APPEND_SECONDS = 4.0
REPEATS = 3
XPROC_RATE = 1000
XPROC_TICK = 0.01
XPROC_SECONDS = 10.0
XPROC_WARMUP = 1.0


#: The figures of a fan-out that could not run (it is reported as such).
FAILED = {
    "rate": 0.0,
    "samples": 0,
    "p50": float("nan"),
    "p99": float("nan"),
    "lost": -1,
    "dup": -1,
    "server_cpu": float("nan"),
}


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- child processes ------------------------------------------------------------------------


async def appender(url: str, name: str, seconds: float) -> None:
    """APPENDERS tasks appending one event each for ``seconds`` from the start time read from
    stdin (once every appender said it is ready); prints the count as JSON."""
    store = await PostgresEventStore.open(url)
    try:
        await store.append(f"{name}-warm", [NewEvent("Warm", b"{}")])
        print("ready", flush=True)
        start_at = float(await asyncio.to_thread(sys.stdin.readline))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        stop_at = start_at + seconds
        counts = [0] * APPENDERS

        async def one(task: int) -> None:
            stream = f"{name}-{task}"
            while time.time() < stop_at:
                await store.append(stream, [NewEvent("Append", b'{"n":1}')])
                counts[task] += 1

        await asyncio.gather(*(one(task) for task in range(APPENDERS)))
        print(json.dumps({"events": sum(counts)}), flush=True)
    finally:
        await store.close()


async def ticker(url: str, stream: str, start_at: float, seconds: float) -> None:
    """XPROC_RATE events/s to ``stream``: every tick, its share as concurrent appends, each
    stamped with the wall-clock time it was handed to the store."""
    store = await PostgresEventStore.open(url)
    per_tick = round(XPROC_RATE * XPROC_TICK)
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        tick = 0
        pending: set[asyncio.Task[Any]] = set()
        while time.time() < start_at + seconds:
            for _ in range(per_tick):
                data = json.dumps({"sent": time.time()}).encode()
                task = asyncio.create_task(store.append(stream, [NewEvent("Tick", data)]))
                pending.add(task)
                task.add_done_callback(pending.discard)
            tick += 1
            await asyncio.sleep(max(0.0, start_at + tick * XPROC_TICK - time.time()))
        await asyncio.gather(*pending)
        await store.append(stream, [NewEvent("Done", b"{}")])
    finally:
        await store.close()


def child(mode: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, f"--{mode}", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


# -- measurements -----------------------------------------------------------------------------


async def append_rate(url: str, processes: int, round_: int) -> float:
    children = [
        child("appender", url, f"r{round_}p{processes}w{i}", str(APPEND_SECONDS))
        for i in range(processes)
    ]
    for proc in children:  # every child has opened its store (start-up is slow under load)
        assert proc.stdout is not None
        ready = await asyncio.to_thread(proc.stdout.readline)
        assert ready.strip() == "ready", ready
    start_at = time.time() + 0.2
    total = 0
    for proc in children:
        out, _ = await asyncio.to_thread(proc.communicate, f"{start_at}\n")
        assert proc.returncode == 0, out
        total += json.loads(out.strip().splitlines()[-1])["events"]
    return total / APPEND_SECONDS


async def append_scale(url: str) -> dict[str, float]:
    one: list[float] = []
    two: list[float] = []
    for round_ in range(REPEATS):
        one.append(await append_rate(url, 1, round_))
        two.append(await append_rate(url, 2, round_))
    return {"one": statistics.median(one), "two": statistics.median(two)}


async def cross_process(url: str) -> dict[str, float]:
    stream = "xproc"
    store = await PostgresEventStore.open(url)
    latencies: list[float] = []
    try:
        await store.listener.listening.wait()
        start_at = time.time() + 3.0
        writer = child("ticker", url, stream, str(start_at), str(XPROC_SECONDS + XPROC_WARMUP))
        received = 0
        events = store.subscribe(stream, 0)
        try:
            async for event in events:
                if event.type == "Done":
                    break
                now = time.time()
                received += 1
                sent = json.loads(event.data)["sent"]
                if sent >= start_at + XPROC_WARMUP:
                    latencies.append(now - sent)
        finally:
            await events.aclose()
        await asyncio.to_thread(writer.wait)
        assert writer.returncode == 0
    finally:
        await store.close()
    latencies.sort()
    return {
        "events": received,
        "rate": len(latencies) / XPROC_SECONDS,
        "p50": 1000 * latencies[len(latencies) // 2],
        "p99": 1000 * latencies[int(len(latencies) * 0.99)],
        "max": 1000 * latencies[-1],
    }


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    admin_url = os.environ.get(
        "RUNLOG_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    async with bench_database(admin_url) as url:
        await (await PostgresEventStore.open(url)).close()  # the schema, made once
        scale = await append_scale(url)
        x = await cross_process(url)
    progress(f"append: {scale}")
    progress(f"cross-process: {x}")
    # A saturated server attaches 1,000 clients slowly: give them time rather than fail.
    bench.sse.OPEN_TIMEOUT = 120.0
    fanouts: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="runlog-bench-scale-") as tmp_dir:
        tmp = Path(tmp_dir)
        for workers in (1, 2):
            async with bench_database(admin_url) as url:
                try:
                    fanouts[workers] = await fanout(
                        tmp, url, workers=workers, idle=False, name=f"fanout{workers}"
                    )
                except Exception as exc:  # report it and go on with the other measurement
                    log = (tmp / f"fanout{workers}-server.log").read_text(errors="replace")
                    progress(f"fan-out with {workers} workers failed: {exc!r}\n{log[-3000:]}")
                    fanouts[workers] = dict(FAILED)
            progress(f"fan-out {workers}: {fanouts[workers]}")
    f1, f2 = fanouts[1], fanouts[2]
    ratio = scale["two"] / scale["one"]
    lost = f1["lost"] + f2["lost"]
    rows = [
        ("append, 1 process x 50 tasks", f"{scale['one']:,.0f} ev/s", f"median of {REPEATS}"),
        ("append, 2 processes x 50 tasks", f"{scale['two']:,.0f} ev/s", f"median of {REPEATS}"),
        ("append scale (2 / 1 processes)", f"{ratio:.2f}", "same run"),
        ("cross-process events received", f"{x['events']:,}", f"{x['rate']:,.0f} ev/s measured"),
        ("cross-process latency p50", f"{x['p50']:.1f} ms", "append on A -> B's subscriber"),
        ("cross-process latency p99", f"{x['p99']:.1f} ms", "target <= 50"),
        ("cross-process latency max", f"{x['max']:.1f} ms", ""),
    ]
    for label, f in (("1 worker", f1), ("2 workers", f2)):
        rows += [
            (
                f"fan-out {label}: append rate",
                f"{f['rate']:,.0f} ev/s",
                f"target 5,000 (of {bench.sse.OFFERED:,.0f} offered)",
            ),
            (f"fan-out {label}: frames delivered", f"{f['samples']:,}", "in the window"),
            (f"fan-out {label}: latency p50", f"{f['p50']:.1f} ms", "created_at -> client"),
            (f"fan-out {label}: latency p99", f"{f['p99']:.1f} ms", "target <= 100"),
            (f"fan-out {label}: lost / duplicated", f"{f['lost']} / {f['dup']}", "target 0"),
            (f"fan-out {label}: server CPU", f"{f['server_cpu']:.2f}", "cores, all workers"),
        ]
    print_rows(rows, load_before, started, value_width=18)
    print(
        f"RESULT xproc_p99_ms={x['p99']:.0f} fanout2_eps={f2['rate']:.0f}"
        f" fanout2_p99_ms={f2['p99']:.0f} lost={lost} append_scale={ratio:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--appender", nargs=3, metavar=("URL", "NAME", "SECONDS"))
    parser.add_argument("--ticker", nargs=4, metavar=("URL", "STREAM", "START", "SECONDS"))
    args = parser.parse_args()
    if args.appender:
        url, name, seconds = args.appender
        asyncio.run(appender(url, name, float(seconds)))
    elif args.ticker:
        url, stream, start, seconds = args.ticker
        asyncio.run(ticker(url, stream, float(start), float(seconds)))
    else:
        asyncio.run(main())
