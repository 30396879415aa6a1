"""A writer in another process, for the crash and multi-process tests.

Run as a script (``python child_writer.py DB --stream S ...``); pytest does not collect it. It
prints ``ready`` once the store is open, optionally waits for a line on stdin (a start barrier so
that several writers really overlap), then prints ``pos <position> <stream> <seq>`` for every
event *after* the append that recorded it has returned, and ``done`` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgspec

from eventstore import EventStore, NewEvent, open_event_store


async def _worker(store: EventStore, args: argparse.Namespace, worker: int) -> None:
    own = f"{args.stream}-{worker}" if args.tasks > 1 else args.stream
    own_seq = await store.last_seq(own)
    i = 0
    while args.count == 0 or i < args.count:
        i += 1
        events = [
            NewEvent(
                "ChildWrote",
                msgspec.json.encode({"writer": own, "i": i, "k": k, "pad": "é" * 40}),
            )
            for k in range(args.batch)
        ]
        if args.shared and i % args.shared_every == 0:
            recorded = await store.append(args.shared, events, None)
        else:
            # The own stream has no other writer, so the check must always pass, even while
            # another process appends to the same file.
            recorded = await store.append(own, events, own_seq)
            own_seq = recorded[-1].seq
        for event in recorded:
            print(f"pos {event.position} {event.stream} {event.seq}", flush=True)
        if args.pause:
            await asyncio.sleep(args.pause)


async def _main(args: argparse.Namespace) -> None:
    store = await open_event_store(args.db)
    try:
        print("ready", flush=True)
        if args.wait_go:
            await asyncio.to_thread(sys.stdin.readline)
        await asyncio.gather(*(_worker(store, args, w) for w in range(args.tasks)))
    finally:
        await store.close()
    print("done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db", help="a SQLite path or a postgresql:// URL")
    parser.add_argument("--stream", default="child")
    parser.add_argument("--count", type=int, default=100, help="appends per task; 0: forever")
    parser.add_argument("--batch", type=int, default=1, help="events per append")
    parser.add_argument("--tasks", type=int, default=1, help="concurrent appending tasks")
    parser.add_argument("--shared", default="", help="a stream shared with other writers")
    parser.add_argument("--shared-every", type=int, default=3)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds to sleep between appends")
    parser.add_argument("--wait-go", action="store_true", help="wait for a stdin line first")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
