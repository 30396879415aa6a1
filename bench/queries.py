"""Query latency as the log grows, and a server's memory over a large log. A script, not a test.

    .venv/bin/python bench/queries.py [--small 10000] [--large 1000000]

flat
    Two server subprocesses, one over a log of ``--small`` runs and one over a log of ``--large``
    runs (``bench/make_log.py --runs``: short runs, ten to a thread; cached in
    ``bench/.cache``). Each list and detail query is sent ``REQUESTS`` times to each server,
    alternately (so both see the same machine), from one aiohttp session per server: the
    newest page of ``GET /v1/runs?limit=50``, the same with ``status=failed`` (a rare status:
    the index has to skip most runs), a page deep in the ``before`` cursor (the middle of the
    log), ``GET /v1/runs/{id}`` and ``GET /v1/threads/{id}/messages`` for ids spread over the
    whole log. The figure per query is p50(large) / p50(small); flat means at most 2.

memory
    A server subprocess over the realistic 1,000,000-event log (``bench/make_log.py``): it
    serves every query above, then holds 1,000 idle SSE connections that follow a run parked
    in ``waiting_for_input`` (the clients of ``bench/sse.py``); its VmRSS then.

The last line is machine-readable: ``RESULT list_flat_ratio=... rss_mb=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import make_log  # noqa: E402
import sse  # noqa: E402

REQUESTS = 200
IDS = 50  # distinct runs and threads per server, spread over its log
IDLE_CONNECTIONS = 1000
MEMORY_EVENTS = 1_000_000


def spread_ids(db: Path, count: int) -> tuple[list[str], list[str], str]:
    """Run ids and thread ids spread evenly over the log, and the run id in its middle (rows
    picked by rowid: the rebuild inserted the runs in log order)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        last = conn.execute("SELECT max(rowid) FROM runs").fetchone()[0]
        step = max(1, last // count)
        picked = list(range(step // 2 + 1, last + 1, step))[:count]
        rows = conn.execute(
            f"SELECT run_id, thread_id FROM runs WHERE rowid IN ({', '.join('?' * len(picked))})",
            picked,
        ).fetchall()
        middle = conn.execute(
            "SELECT run_id FROM runs WHERE rowid >= ? ORDER BY rowid LIMIT 1", (last // 2,)
        ).fetchone()[0]
    finally:
        conn.close()
    return [r[0] for r in rows], [r[1] for r in rows], middle


def query_paths(db: Path) -> dict[str, list[str]]:
    runs, threads, middle = spread_ids(db, IDS)
    return {
        "GET /v1/runs?limit=50": ["/v1/runs?limit=50"],
        "GET /v1/runs?limit=50&status=failed": ["/v1/runs?limit=50&status=failed"],
        "GET /v1/runs?limit=50&before=<middle>": [f"/v1/runs?limit=50&before={middle}"],
        "GET /v1/runs/{id}": [f"/v1/runs/{r}" for r in runs],
        "GET /v1/threads/{id}/messages": [f"/v1/threads/{t}/messages" for t in threads],
    }


async def timed_get(session: aiohttp.ClientSession, url: str, key: str) -> float:
    started = time.perf_counter()
    async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status}")
    return time.perf_counter() - started


@contextlib.asynccontextmanager
async def serving(db: Path, tmp: Path, name: str) -> Any:
    config = sse.write_config(tmp / f"{name}.toml", secret_key="bench")
    async with sse.server_process(str(db), config, tmp / f"{name}.log") as (base, pid):
        yield base, pid


async def measure_flat(small: int = 10_000, large: int = 1_000_000) -> dict[str, Any]:
    """p50 of each query over a log of ``small`` runs and one of ``large`` runs."""
    logs = {"small": make_log.cached_log(runs=small), "large": make_log.cached_log(runs=large)}
    paths = {size: query_paths(db) for size, db in logs.items()}
    key = make_log.DEFAULT_KEY
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        async with (
            serving(logs["small"], tmp, "small") as (small_base, _),
            serving(logs["large"], tmp, "large") as (large_base, _),
            aiohttp.ClientSession() as small_session,
            aiohttp.ClientSession() as large_session,
        ):
            bases = {"small": (small_base, small_session), "large": (large_base, large_session)}
            figures: dict[str, dict[str, float]] = {}
            for query in paths["small"]:
                samples: dict[str, list[float]] = {"small": [], "large": []}
                for i in range(REQUESTS + 20):
                    for size in ("small", "large"):
                        base, session = bases[size]
                        options = paths[size][query]
                        seconds = await timed_get(session, base + options[i % len(options)], key)
                        if i >= 20:  # the first requests warm both servers up
                            samples[size].append(seconds)
                p50 = {size: statistics.median(s) * 1000 for size, s in samples.items()}
                figures[query] = {
                    "small_ms": p50["small"],
                    "large_ms": p50["large"],
                    "ratio": p50["large"] / p50["small"],
                }
    return {
        "small_runs": small,
        "large_runs": large,
        "queries": figures,
        "list_flat_ratio": max(f["ratio"] for f in figures.values()),
    }


async def measure_memory(events: int = MEMORY_EVENTS) -> dict[str, Any]:
    """VmRSS of a server over the realistic log after every query and idle SSE connections."""
    db = make_log.cached_log(events=events, key=sse.KEY)
    paths = query_paths(db)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        async with serving(db, tmp, "memory") as (base, pid), aiohttp.ClientSession() as session:
            started_kb = sse.rss_kb(pid)
            for options in paths.values():
                for path in options:
                    await timed_get(session, base + path, sse.KEY)
            served_kb = sse.rss_kb(pid)
            run_id = await sse.start_run(session, base, "/ask are you there?")
            headers = {"Authorization": f"Bearer {sse.KEY}"}
            deadline = time.monotonic() + 30
            while True:  # parked: no more traffic on its stream
                async with session.get(f"{base}/v1/runs/{run_id}", headers=headers) as r:
                    if (await r.json())["status"] == "waiting_for_input":
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the run did not park")
                await asyncio.sleep(0.05)
            last = (await sse.log_frames(session, base, run_id))[-1].seq
            port = int(base.rsplit(":", 1)[1])
            clients = await sse.open_clients(
                port, [sse.sse_request(run_id, last)] * IDLE_CONNECTIONS, None
            )
            await asyncio.sleep(0.5)
            idle_kb = sse.rss_kb(pid)
            for client in clients:
                client._finish(None)
            async with session.post(f"{base}/v1/runs/{run_id}:cancel", headers=headers) as r:
                assert r.status == 200
    return {
        "events": events,
        "rss_start_mb": started_kb / 1024,
        "rss_served_mb": served_kb / 1024,
        "rss_mb": idle_kb / 1024,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000, help="runs of the small log")
    parser.add_argument("--large", type=int, default=1_000_000, help="runs of the large log")
    args = parser.parse_args()
    flat = await measure_flat(args.small, args.large)
    print(f"{'query':40} {args.small:>12,} runs {args.large:>12,} runs  ratio (target <= 2)")
    for query, f in flat["queries"].items():
        print(f"{query:40} {f['small_ms']:12.2f} ms {f['large_ms']:12.2f} ms  {f['ratio']:.2f}")
    memory = await measure_memory()
    print(
        f"server RSS over {memory['events']:,} events: {memory['rss_start_mb']:.0f} MB at start,"
        f" {memory['rss_served_mb']:.0f} MB after the queries, {memory['rss_mb']:.0f} MB with"
        f" {IDLE_CONNECTIONS:,} idle SSE connections (target < 250 MB)"
    )
    print(f"RESULT list_flat_ratio={flat['list_flat_ratio']:.2f} rss_mb={memory['rss_mb']:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
