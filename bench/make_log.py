"""Write a realistic runlog log quickly, through the domain's events and the real store. A script.

    .venv/bin/python bench/make_log.py runlog-1m.db [--events 1000000] [--key KEY]
    .venv/bin/python bench/make_log.py runlog-runs.db --runs 1000000

Other benchmarks call :func:`cached_log`, which keeps each log it makes under ``bench/.cache``
(ignored by git) and makes it again only when this file changes.

The file is what a server would have written: org ``default``, user ``admin`` and one API key
(``--key``, default below) made by the first-start bootstrap, then threads, each with a user
message and one run on the ``scripted`` route: ``run.started`` with ``thread.run_started``,
streamed ``message.delta`` events, tool calls with their results, ``run.usage`` per model call,
and an end — about 90% complete (with the assistant's answer on the thread), 6% fail, 4% are
cancelled. Every event goes through ``SQLiteEventStore.append_many`` with its projections, many
runs per call (one transaction each, ``synchronous=NORMAL``: a crash would cost the file, which
a benchmark can remake), so the hash chain, the seqs and every read model are the real ones.
It prints events/s; ``runlog verify`` and ``runlog rebuild --check`` pass on the result.

``--runs N`` writes a log for the query benchmarks instead: N short runs, ten to a thread
(each: the user's message, ``thread.run_started``, ``run.started``, one ``run.usage`` and the
end, in the same 90/6/4 mix; about 5.1 events a run, so a million runs is about 5.1 million
events). It is written without projections (the hash chain and seqs are still the store's) and
its read models are then built with ``runlog rebuild``, which is several times faster than
applying them per append.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eventstore import AppendRequest, NewEvent, SQLiteEventStore, connect_database
from projections import all_projections, rebuild_in_place
from runs.events import (
    MessageAdded,
    MessageDelta,
    RunCancelled,
    RunCancelRequested,
    RunCompleted,
    RunFailed,
    RunStarted,
    RunUsage,
    ThreadCreated,
    ThreadRunStarted,
    ToolCalled,
    ToolCallOutcomes,
    ToolResult,
    encode_event,
    run_stream,
    thread_stream,
)
from runs.ids import new_id
from runs.service import Accounts
from runs.startup import bootstrap

DEFAULT_KEY = "rl_bench_key_0123456789abcdef0123456789abcdef"
RUNS_PER_APPEND = 100
SHORT_RUNS_PER_APPEND = 1000
RUNS_PER_THREAD = 10
CACHE = Path(__file__).resolve().parent / ".cache"
SENTENCE = (
    "the log is the only truth and every state change is an event appended in order so that "
    "a projection replayed from position one gives back the same rows byte for byte"
)
WORDS = SENTENCE.split(" ")


def run_events(
    rng: random.Random, org_id: str, user_id: str, thread_id: str, run_id: str
) -> tuple[list[NewEvent], list[NewEvent]]:
    """(thread events, run events) of one conversation turn."""
    question = " ".join(rng.choices(WORDS, k=rng.randint(5, 30)))
    thread = [
        encode_event(
            ThreadCreated(
                thread_id=thread_id, org_id=org_id, created_by_user_id=user_id, title="bench"
            )
        ),
        encode_event(
            MessageAdded(
                message_id=new_id(),
                thread_id=thread_id,
                org_id=org_id,
                role="user",
                content=question,
                created_by_user_id=user_id,
            )
        ),
        encode_event(ThreadRunStarted(run_id=run_id)),
    ]
    run = [
        encode_event(
            RunStarted(
                run_id=run_id,
                thread_id=thread_id,
                org_id=org_id,
                created_by_user_id=user_id,
                trace_id=uuid.uuid4().hex,
                route_id="scripted",
                provider="scripted",
                model="scripted-1",
                persona_id="default@1",
            )
        )
    ]
    answer: list[str] = []
    calls = 2 if rng.random() < 0.3 else 1
    for call in range(1, calls + 1):
        if call == 2:  # the first call asked for a tool
            tool_call_id = f"toolu_{uuid.uuid4().hex[:24]}"
            run.append(
                encode_event(
                    ToolCalled(
                        tool_call_id=tool_call_id,
                        name="calculator",
                        arguments={"expression": f"{rng.randint(1, 99)}*7"},
                        call=1,
                    )
                )
            )
            run.append(
                encode_event(ToolResult(tool_call_id=tool_call_id, name="calculator", output="42"))
            )
        for _ in range(rng.randint(15, 45)):
            text = " ".join(rng.choices(WORDS, k=rng.randint(1, 4))) + " "
            answer.append(text)
            run.append(encode_event(MessageDelta(content=text, call=call)))
        run.append(
            encode_event(
                RunUsage(
                    model="scripted-1",
                    input_tokens=rng.randint(200, 4000),
                    output_tokens=rng.randint(20, 800),
                    cache_read_tokens=rng.choice((0, 0, 1024, 2048)),
                    call=call,
                )
            )
        )
    end = rng.random()
    if end < 0.06:
        run.append(encode_event(RunFailed(error_class="provider.error", message="scripted /fail")))
    elif end < 0.10:
        run.append(encode_event(RunCancelRequested(user_id=user_id)))
        run.append(encode_event(RunCancelled(tool_calls=ToolCallOutcomes())))
    else:
        message_id = new_id()
        thread.append(
            encode_event(
                MessageAdded(
                    message_id=message_id,
                    thread_id=thread_id,
                    org_id=org_id,
                    role="assistant",
                    content="".join(answer).strip(),
                    run_id=run_id,
                )
            )
        )
        run.append(encode_event(RunCompleted(message_id=message_id)))
    return thread, run


def short_run(
    rng: random.Random, org_id: str, user_id: str, thread_id: str, run_id: str
) -> tuple[list[NewEvent], list[NewEvent]]:
    """(thread events, run events) of one short run of the query benchmarks' log."""
    thread = [
        encode_event(
            MessageAdded(
                message_id=new_id(),
                thread_id=thread_id,
                org_id=org_id,
                role="user",
                content=" ".join(rng.choices(WORDS, k=rng.randint(3, 12))),
                created_by_user_id=user_id,
            )
        ),
        encode_event(ThreadRunStarted(run_id=run_id)),
    ]
    started = RunStarted(
        run_id=run_id,
        thread_id=thread_id,
        org_id=org_id,
        created_by_user_id=user_id,
        trace_id=uuid.uuid4().hex,
        route_id="scripted",
        provider="scripted",
        model="scripted-1",
    )
    usage = RunUsage(
        model="scripted-1",
        input_tokens=rng.randint(200, 4000),
        output_tokens=rng.randint(20, 800),
    )
    end = rng.random()
    last: RunFailed | RunCancelled | RunCompleted
    if end < 0.06:
        last = RunFailed(error_class="provider.error", message="scripted /fail")
    elif end < 0.10:
        last = RunCancelled(tool_calls=ToolCallOutcomes())
    else:
        last = RunCompleted()
    return thread, [encode_event(started), encode_event(usage), encode_event(last)]


async def _bootstrap(store: SQLiteEventStore, path: str, key: str) -> tuple[str, str]:
    accounts = Accounts(store)
    if await bootstrap(accounts, {"RUNLOG_BOOTSTRAP_API_KEY": key}) is None:
        raise SystemExit(f"{path} already holds a log: give a new file")
    [key_row] = await accounts.queries.api_keys()
    return key_row["org_id"], key_row["user_id"]


async def make_runs_log(path: str, runs: int, key: str, seed: int = 7) -> int:
    """A log of ``runs`` short runs, its read models built by a rebuild at the end."""
    store = await SQLiteEventStore.open(path, all_projections(), synchronous="NORMAL")
    try:
        org_id, user_id = await _bootstrap(store, path, key)
    finally:
        await store.close()
    store = await SQLiteEventStore.open(path, (), synchronous="NORMAL")
    try:
        rng = random.Random(seed)
        made = 0
        thread_id, thread_seq = "", 0
        while made < runs:
            batch: list[AppendRequest] = []
            for _ in range(min(SHORT_RUNS_PER_APPEND, runs - made)):
                if made % RUNS_PER_THREAD == 0:
                    thread_id, thread_seq = new_id(), 1
                    created = ThreadCreated(
                        thread_id=thread_id, org_id=org_id, created_by_user_id=user_id
                    )
                    batch.append(
                        AppendRequest(thread_stream(thread_id), [encode_event(created)], 0)
                    )
                run_id = new_id()
                thread, run = short_run(rng, org_id, user_id, thread_id, run_id)
                batch.append(AppendRequest(thread_stream(thread_id), thread, thread_seq))
                batch.append(AppendRequest(run_stream(run_id), run, 0))
                thread_seq += len(thread)
                made += 1
            await store.append_many(batch)
        written = await store.head()
    finally:
        await store.close()
    db = connect_database(path)
    try:
        rebuild_in_place(db, all_projections())
    finally:
        db.close()
    return written


async def make_log(path: str, events: int, key: str, seed: int = 7) -> int:
    store = await SQLiteEventStore.open(path, all_projections(), synchronous="NORMAL")
    try:
        org_id, user_id = await _bootstrap(store, path, key)
        rng = random.Random(seed)
        written = await store.head()
        while written < events:
            batch: list[AppendRequest] = []
            for _ in range(RUNS_PER_APPEND):
                thread_id, run_id = new_id(), new_id()
                thread, run = run_events(rng, org_id, user_id, thread_id, run_id)
                batch.append(AppendRequest(thread_stream(thread_id), thread, 0))
                batch.append(AppendRequest(run_stream(run_id), run, 0))
            recorded = await store.append_many(batch)
            written = recorded[-1].position
        return written
    finally:
        await store.close()


def cached_log(
    *, events: int | None = None, runs: int | None = None, key: str = DEFAULT_KEY
) -> Path:
    """The log of ``events`` realistic events or of ``runs`` short runs, made once and kept
    in ``bench/.cache`` (named after this file's content, so a change makes it anew)."""
    version = hashlib.sha256(Path(__file__).read_bytes() + key.encode()).hexdigest()[:10]
    name = f"events-{events}" if runs is None else f"runs-{runs}"
    path = CACHE / f"{name}-{version}.db"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")
        for stale in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            stale.unlink(missing_ok=True)
        started = time.perf_counter()
        if runs is None:
            written = asyncio.run(make_log(str(partial), events or 1_000_000, key))
        else:
            written = asyncio.run(make_runs_log(str(partial), runs, key))
        print(
            f"made {path.name}: {written:,} events in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        partial.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", help="the new log file")
    parser.add_argument("--events", type=int, default=1_000_000, help="at least this many")
    parser.add_argument("--runs", type=int, help="short runs instead (the query benchmarks' log)")
    parser.add_argument("--key", default=DEFAULT_KEY, help="the bootstrap API key")
    args = parser.parse_args()
    if Path(args.db).exists():
        raise SystemExit(f"{args.db} exists: give a new file")
    started = time.perf_counter()
    if args.runs is not None:
        written = asyncio.run(make_runs_log(args.db, args.runs, args.key))
    else:
        written = asyncio.run(make_log(args.db, args.events, args.key))
    elapsed = time.perf_counter() - started
    size = Path(args.db).stat().st_size / 1e6
    print(f"{args.db}: {written:,} events in {elapsed:.1f} s ({written / elapsed:,.0f} events/s)")
    print(f"file size {size:,.0f} MB; API key {args.key}")


if __name__ == "__main__":
    main()
