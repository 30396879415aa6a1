"""What starting a run costs for the cross-process limits and leases. A script.

    .venv/bin/python bench/leases.py [--runs N] [--reps N] [--pg-url URL]

On each backend (SQLite on a fresh file; PostgreSQL in a fresh schema of the database at
``--pg-url``, default the local server), 50 asyncio tasks start ``--runs`` runs between them, each
on its own thread, the way the service appends a run's start: ``thread.run_started`` at the
thread's seq with ``run.started``, every projection applied.

reference
    the start append without a cap (as before the org cap moved into the writer);
capped
    the same append carrying the org's cap on live runs (``projections.runs.live_runs_below``),
    which the writer counts with the head locked, once per org and batch;
capped + lease
    on top, the run's lease taken before the append and given up after it (what the service and
    the supervisor do per run; on SQLite an in-memory set, on PostgreSQL two statements on
    ``run_leases``).

Figures are runs/s, the median of ``--reps`` repetitions, with the ratio to the reference of the
same backend measured in the same run. The last line is machine-readable:
``RESULT sqlite_cap_ratio=... sqlite_lease_ratio=... pg_cap_ratio=... pg_lease_ratio=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eventstore import (
    AppendRequest,
    EventStore,
    open_coordination,
    open_event_store,
)
from projections import all_projections
from projections.runs import live_runs_below
from runs.events import (
    RunCompleted,
    RunStarted,
    ThreadCreated,
    ThreadRunStarted,
    encode_event,
    run_stream,
    thread_stream,
)
from runs.ids import new_id

TASKS = 50
ORG = "bench-org"


async def _threads(store: EventStore, count: int) -> list[str]:
    ids = [new_id() for _ in range(count)]
    await asyncio.gather(
        *(
            store.append(
                thread_stream(t),
                [encode_event(ThreadCreated(thread_id=t, org_id=ORG, created_by_user_id="u"))],
                0,
            )
            for t in ids
        )
    )
    return ids


async def _start_runs(location: str, runs: int, mode: str) -> float:
    store = await open_event_store(location, all_projections())
    coordination = await open_coordination(location, "bench", 10.0)
    try:
        threads = await _threads(store, runs)
        queue = list(threads)

        async def worker() -> None:
            while queue:
                thread_id = queue.pop()
                run_id = new_id()
                started = RunStarted(
                    run_id=run_id,
                    thread_id=thread_id,
                    org_id=ORG,
                    created_by_user_id="u",
                    trace_id="t",
                    route_id="r",
                    provider="scripted",
                    model="m",
                )
                if mode == "lease":
                    await coordination.leases.acquire(run_id)
                cap = None if mode == "plain" else live_runs_below(ORG, 10**9)
                await store.append_many(
                    [
                        AppendRequest(
                            thread_stream(thread_id),
                            [encode_event(ThreadRunStarted(run_id=run_id))],
                            1,
                        ),
                        AppendRequest(run_stream(run_id), [encode_event(started)], 0, cap=cap),
                    ]
                )
                # The run ends at once, so the org's live count stays small, as in service.
                await store.append(
                    run_stream(run_id), [encode_event(RunCompleted(message_id=new_id()))], 1
                )
                if mode == "lease":
                    await coordination.leases.release(run_id)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(TASKS)))
        return runs / (time.perf_counter() - began)
    finally:
        await coordination.close()
        await store.close()


async def _backend(name: str, location_for: object, runs: int, reps: int) -> dict[str, float]:
    figures: dict[str, list[float]] = {"plain": [], "cap": [], "lease": []}
    for rep in range(reps):
        for mode, values in figures.items():
            location = location_for(f"{mode}{rep}")  # type: ignore[operator]
            values.append(await _start_runs(location, runs, mode))
    medians = {mode: statistics.median(values) for mode, values in figures.items()}
    print(f"\n{name}: {runs} runs started by {TASKS} tasks, median of {reps}")
    print("| measurement | runs/s | ratio |")
    print("| --- | ---: | ---: |")
    print(f"| reference: start append, no cap | {medians['plain']:,.0f} | 1.00 |")
    print(
        f"| capped: the org's live-run cap in the writer | {medians['cap']:,.0f}"
        f" | {medians['cap'] / medians['plain']:.2f} |"
    )
    print(
        f"| capped + lease taken and given up | {medians['lease']:,.0f}"
        f" | {medians['lease'] / medians['plain']:.2f} |"
    )
    return {
        "cap": medians["cap"] / medians["plain"],
        "lease": medians["lease"] / medians["plain"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    import os

    os.environ.setdefault("RUNLOG_TEST_PG_URL", args.pg_url)
    from tests.postgres import fresh_schema, session_database

    with tempfile.TemporaryDirectory() as tmp:
        sqlite = asyncio.run(
            _backend("SQLite", lambda name: f"{tmp}/{name}.db", args.runs, args.reps)
        )
    # A database of its own, dropped at the end.
    with contextlib.contextmanager(session_database)() as url:
        pg = asyncio.run(
            _backend("PostgreSQL", lambda name: fresh_schema(url), args.runs, args.reps)
        )
    print(
        f"RESULT sqlite_cap_ratio={sqlite['cap']:.2f} sqlite_lease_ratio={sqlite['lease']:.2f}"
        f" pg_cap_ratio={pg['cap']:.2f} pg_lease_ratio={pg['lease']:.2f}"
    )


if __name__ == "__main__":
    main()
