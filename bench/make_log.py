"""Write a realistic runlog log quickly, through the domain's events and the real store. A script.

    .venv/bin/python bench/make_log.py runlog-1m.db [--events 1000000] [--key KEY]

The file is what a server would have written: org ``default``, user ``admin`` and one API key
(``--key``, default below) made by the first-start bootstrap, then threads, each with a user
message and one run on the ``scripted`` route: ``run.started`` with ``thread.run_started``,
streamed ``message.delta`` events, tool calls with their results, ``run.usage`` per model call,
and an end — about 90% complete (with the assistant's answer on the thread), 6% fail, 4% are
cancelled. Every event goes through ``SQLiteEventStore.append_many`` with its projections, many
runs per call (one transaction each, ``synchronous=NORMAL``: a crash would cost the file, which
a benchmark can remake), so the hash chain, the seqs and every read model are the real ones.
It prints events/s; ``runlog verify`` and ``runlog rebuild --check`` pass on the result.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eventstore import AppendRequest, NewEvent, SQLiteEventStore
from projections import all_projections
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


async def make_log(path: str, events: int, key: str, seed: int = 7) -> int:
    store = await SQLiteEventStore.open(path, all_projections(), synchronous="NORMAL")
    try:
        accounts = Accounts(store)
        if await bootstrap(accounts, {"RUNLOG_BOOTSTRAP_API_KEY": key}) is None:
            raise SystemExit(f"{path} already holds a log: give a new file")
        [key_row] = await accounts.queries.api_keys()
        org_id, user_id = key_row["org_id"], key_row["user_id"]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", help="the new log file")
    parser.add_argument("--events", type=int, default=1_000_000, help="at least this many")
    parser.add_argument("--key", default=DEFAULT_KEY, help="the bootstrap API key")
    args = parser.parse_args()
    if Path(args.db).exists():
        raise SystemExit(f"{args.db} exists: give a new file")
    started = time.perf_counter()
    written = asyncio.run(make_log(args.db, args.events, args.key))
    elapsed = time.perf_counter() - started
    size = Path(args.db).stat().st_size / 1e6
    print(f"{args.db}: {written:,} events in {elapsed:.1f} s ({written / elapsed:,.0f} events/s)")
    print(f"file size {size:,.0f} MB; API key {args.key}")


if __name__ == "__main__":
    main()
