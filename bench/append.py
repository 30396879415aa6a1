"""Event store benchmark: group-commit appends and catch-up reads. A script.

    /tmp/venv/bin/python bench/append.py [--events N] [--append-events N] [--reps N]
    /tmp/venv/bin/python bench/append.py --backend postgres [--pg-url URL] ...

With ``--backend postgres`` the same table is printed for ``PostgresEventStore`` (in a fresh
database made for the run and dropped after it), the reference being raw asyncpg
``executemany`` of the same rows, 100 per transaction, and the catch-up reference a raw asyncpg
``fetch`` (see ``bench/pg.py``).

group commit
    ``SQLiteEventStore`` with ``synchronous=FULL`` on a fresh file; 50 asyncio tasks each
    append one ~200-byte event per call to their own stream (exact ``expected_seq``) until
    ``--append-events`` events are written. Latency is the time one ``append`` awaits.

reference
    Raw stdlib ``sqlite3`` into the same schema (``eventstore.schema.SCHEMA``) on another fresh
    file with the same PRAGMAs (WAL, synchronous=FULL): ``executemany`` of 100 rows per
    transaction. It writes the same rows (streams, seqs, payloads, hash chain) as the group
    commit; positions and hashes are computed before the clock starts, so the reference does
    strictly less work.

catch-up
    A log of ``--events`` events (default 1,000,000; many streams, plus one target stream of
    50 events spread through the log), written once with raw ``sqlite3`` and a valid hash chain
    and cached under ``bench/.cache/``. ``SQLiteEventStore.read_stream(target, 0, 50)`` against
    a raw ``sqlite3`` ``SELECT ... WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?`` plus
    ``fetchall`` of the same rows, each repeated many times; events/s from the median call.

Every figure is the median of ``--reps`` repetitions (catch-up: of all calls). The last line is
machine-readable: ``RESULT append_eps=... append_p99_ms=... append_ratio=... catchup_ratio=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eventstore import NewEvent, SQLiteEventStore
from eventstore.model import GENESIS_HASH, canonical_bytes, chain_hash, utc_now
from eventstore.schema import EVENT_COLUMNS, SCHEMA, connect

CACHE = Path(__file__).resolve().parent / ".cache"
PRODUCERS = 50
REFERENCE_BATCH = 100
TARGET_STREAM = "target"
TARGET_EVENTS = 50
CATCHUP_CALLS = 2000
CACHE_VERSION = 1

Row = tuple[int, str, int, str, str, str, str]


def payload(stream: str, i: int) -> bytes:
    """A ~200-byte JSON payload shaped like a domain event."""
    return msgspec.json.encode(
        {
            "run_id": f"{stream}-0123456789abcdef",
            "i": i,
            "kind": "assistant_delta",
            "text": "The quick brown fox jumps over the lazy dog; " * 2,
            "tokens": {"input": 1234, "output": i % 1000},
        }
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def chained_rows(plan: list[tuple[str, bytes]], created_at: str) -> list[Row]:
    """Rows for ``plan`` (stream, data) appended in order to an empty log, hash chain included."""
    rows: list[Row] = []
    seqs: dict[str, int] = {}
    previous = GENESIS_HASH
    for position, (stream, data) in enumerate(plan, start=1):
        seq = seqs[stream] = seqs.get(stream, 0) + 1
        text = data.decode()
        previous = chain_hash(
            previous, canonical_bytes(position, stream, seq, "Bench", text, created_at)
        )
        rows.append((position, stream, seq, "Bench", text, created_at, previous))
    return rows


# -- group commit --------------------------------------------------------------------------


async def group_commit(path: Path, total: int) -> tuple[float, list[float]]:
    """Events/s and per-append latencies (s) for ``total`` events from PRODUCERS tasks."""
    store = await SQLiteEventStore.open(str(path), synchronous="FULL")
    latencies: list[float] = []
    per_producer = total // PRODUCERS

    async def producer(p: int) -> None:
        stream = f"p{p}"
        seq = 0
        for i in range(per_producer):
            event = NewEvent("Bench", payload(stream, i))
            start = time.perf_counter()
            recorded = await store.append(stream, [event], seq)
            latencies.append(time.perf_counter() - start)
            seq = recorded[-1].seq

    try:
        start = time.perf_counter()
        await asyncio.gather(*(producer(p) for p in range(PRODUCERS)))
        elapsed = time.perf_counter() - start
        head = await store.head()
        assert head == per_producer * PRODUCERS, head
        assert (await store.verify()).ok
    finally:
        await store.close()
    return head / elapsed, latencies


def reference(path: Path, total: int) -> float:
    """Events/s of raw executemany, REFERENCE_BATCH rows per transaction, same rows."""
    per_producer = total // PRODUCERS
    plan = [(f"p{p}", payload(f"p{p}", i)) for i in range(per_producer) for p in range(PRODUCERS)]
    rows = chained_rows(plan, utc_now())
    conn = connect(str(path), "FULL")
    try:
        conn.executescript(SCHEMA)
        insert = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        start = time.perf_counter()
        for offset in range(0, len(rows), REFERENCE_BATCH):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, rows[offset : offset + REFERENCE_BATCH])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == len(rows)
    finally:
        conn.close()
    return len(rows) / elapsed


# -- catch-up ------------------------------------------------------------------------------


def build_log(path: Path, events: int) -> None:
    """Write an ``events``-event log with a valid chain; the target stream is spread through it."""
    tmp = path.with_suffix(".building")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    conn = connect(str(tmp), "OFF")
    conn.executescript(SCHEMA)
    insert = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
    streams = max(1, events // 100)
    every = max(1, events // TARGET_EVENTS)
    seqs: dict[str, int] = {}
    previous = GENESIS_HASH
    created_at = utc_now()
    rows: list[Row] = []
    target_written = 0
    for position in range(1, events + 1):
        if position % every == 0 and target_written < TARGET_EVENTS:
            stream = TARGET_STREAM
            target_written += 1
        else:
            stream = f"run-{position % streams}"
        seq = seqs[stream] = seqs.get(stream, 0) + 1
        data = payload(stream, seq).decode()
        previous = chain_hash(
            previous, canonical_bytes(position, stream, seq, "Bench", data, created_at)
        )
        rows.append((position, stream, seq, "Bench", data, created_at, previous))
        if len(rows) == 50_000 or position == events:
            conn.execute("BEGIN")
            conn.executemany(insert, rows)
            conn.execute("COMMIT")
            rows.clear()
            print(f"  built {position:,}/{events:,} events", file=sys.stderr, flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    tmp.rename(path)


def cached_log(events: int) -> Path:
    path = CACHE / f"catchup-v{CACHE_VERSION}-{events}.db"
    if path.exists():
        conn = sqlite3.connect(path)
        try:
            count = conn.execute("SELECT max(position) FROM events").fetchone()[0]
            target = conn.execute(
                "SELECT count(*) FROM events WHERE stream = ?", (TARGET_STREAM,)
            ).fetchone()[0]
        finally:
            conn.close()
        if count == events and target == min(TARGET_EVENTS, events):
            return path
        path.unlink()
    print(f"building a {events:,}-event log in {path} (cached for reruns)", file=sys.stderr)
    build_log(path, events)
    return path


async def catchup_store(path: Path, calls: int) -> float:
    store = await SQLiteEventStore.open(str(path))
    try:
        expected = len(await store.read_stream(TARGET_STREAM, 0, TARGET_EVENTS))
        timings: list[float] = []
        for _ in range(calls):
            start = time.perf_counter()
            events = await store.read_stream(TARGET_STREAM, 0, TARGET_EVENTS)
            timings.append(time.perf_counter() - start)
            assert len(events) == expected
    finally:
        await store.close()
    return expected / statistics.median(timings)


def catchup_raw(path: Path, calls: int) -> float:
    conn = sqlite3.connect(path)
    sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?"
    params = (TARGET_STREAM, 0, TARGET_EVENTS)
    try:
        expected = len(conn.execute(sql, params).fetchall())
        timings: list[float] = []
        for _ in range(calls):
            start = time.perf_counter()
            rows = conn.execute(sql, params).fetchall()
            timings.append(time.perf_counter() - start)
            assert len(rows) == expected
    finally:
        conn.close()
    return expected / statistics.median(timings)


# -- main ----------------------------------------------------------------------------------


async def main_postgres(args: argparse.Namespace) -> None:
    import pg

    async with pg.bench_database(args.pg_url) as url:
        print(
            f"# python {platform.python_version()}, PostgreSQL at {args.pg_url.split('@')[-1]},"
            f" {os.cpu_count()} CPUs; appends: {args.append_events:,} events,"
            f" {PRODUCERS} producers, {len(payload('p0', 0))}-byte payloads,"
            f" median of {args.reps} runs"
        )
        group: list[tuple[float, float, float]] = []
        ref: list[float] = []
        for rep in range(args.reps):
            eps, latencies = await pg.group_commit(url, args.append_events, PRODUCERS, payload)
            ms = [latency * 1000 for latency in latencies]
            group.append((eps, percentile(ms, 0.50), percentile(ms, 0.99)))
            ref.append(
                await pg.reference(url, args.append_events, PRODUCERS, REFERENCE_BATCH, payload)
            )
            print(
                f"  run {rep + 1}: group {group[-1][0]:,.0f} ev/s p99 {group[-1][2]:.2f} ms,"
                f" reference {ref[-1]:,.0f} ev/s",
                file=sys.stderr,
            )
        store_eps, raw_eps = await pg.catchup(
            url, args.events, TARGET_STREAM, TARGET_EVENTS, CATCHUP_CALLS, payload
        )
    report(
        args,
        group,
        ref,
        store_eps,
        raw_eps,
        "PostgresEventStore.append, 50 tasks, 1 ev/append",
        "raw asyncpg executemany, 100 rows/txn, same rows",
        "raw asyncpg fetch",
    )


async def main(args: argparse.Namespace) -> None:
    if args.backend == "postgres":
        await main_postgres(args)
        return
    CACHE.mkdir(exist_ok=True)
    print(
        f"# python {platform.python_version()}, sqlite {sqlite3.sqlite_version},"
        f" {os.cpu_count()} CPUs; appends: {args.append_events:,} events,"
        f" {PRODUCERS} producers, {len(payload('p0', 0))}-byte payloads,"
        f" median of {args.reps} runs"
    )
    group: list[tuple[float, float, float]] = []
    ref: list[float] = []
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory(dir=CACHE, prefix="append-") as directory:
            eps, latencies = await group_commit(Path(directory) / "group.db", args.append_events)
            ms = [latency * 1000 for latency in latencies]
            group.append((eps, percentile(ms, 0.50), percentile(ms, 0.99)))
            ref.append(reference(Path(directory) / "reference.db", args.append_events))
        print(
            f"  run {rep + 1}: group {group[-1][0]:,.0f} ev/s p99 {group[-1][2]:.2f} ms,"
            f" reference {ref[-1]:,.0f} ev/s",
            file=sys.stderr,
        )
    log = cached_log(args.events)
    raw_eps = catchup_raw(log, CATCHUP_CALLS)
    store_eps = await catchup_store(log, CATCHUP_CALLS)
    report(
        args,
        group,
        ref,
        store_eps,
        raw_eps,
        "SQLiteEventStore.append, 50 tasks, 1 ev/append, FULL",
        "raw sqlite3 executemany, 100 rows/txn, FULL, same rows",
        "raw sqlite3 SELECT ... + fetchall",
    )


def report(
    args: argparse.Namespace,
    group: list[tuple[float, float, float]],
    ref: list[float],
    store_eps: float,
    raw_eps: float,
    store_label: str,
    reference_label: str,
    raw_label: str,
) -> None:
    append_eps = statistics.median(g[0] for g in group)
    append_p50 = statistics.median(g[1] for g in group)
    append_p99 = statistics.median(g[2] for g in group)
    ref_eps = statistics.median(ref)
    append_ratio = append_eps / ref_eps

    catchup_ratio = store_eps / raw_eps

    rows = [
        (f"group commit: {store_label}",
         f"{append_eps:,.0f}", f"{append_p50:.2f}", f"{append_p99:.2f}"),
        (f"reference: {reference_label}",
         f"{ref_eps:,.0f}", "-", "-"),
        ("  ratio group commit / reference", f"{append_ratio:.2f}", "", ""),
        (f"catch-up: store.read_stream(target, 0, 50), {args.events:,}-event log",
         f"{store_eps:,.0f}", "", ""),
        (f"catch-up: {raw_label}, same rows",
         f"{raw_eps:,.0f}", "", ""),
        ("  ratio store / raw", f"{catchup_ratio:.2f}", "", ""),
    ]  # fmt: skip
    header = ("measurement", "events/s", "p50 ms", "p99 ms")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]

    def fmt(cells: tuple[str, ...]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        ).rstrip()

    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(fmt(row))
    print(
        f"RESULT append_eps={append_eps:.0f} append_p99_ms={append_p99:.2f}"
        f" append_ratio={append_ratio:.2f} catchup_ratio={catchup_ratio:.2f}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="catch-up log size")
    parser.add_argument("--append-events", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "RUNLOG_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a server where the user may create (and drop) a database for the run",
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
