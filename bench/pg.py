"""The PostgreSQL half of ``bench/append.py --backend postgres`` (imported by it).

The reference is raw asyncpg, the fastest Python driver, inserting the same rows into the
same table (``eventstore.postgres.SCHEMA``) 100 rows per transaction with ``executemany``;
catch-up compares ``PostgresEventStore.read_stream`` with a raw asyncpg ``fetch`` of the
same rows. Everything runs in a fresh database made for the run and dropped after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import asyncpg

from eventstore import NewEvent, PostgresEventStore
from eventstore.model import GENESIS_HASH, canonical_bytes, chain_hash, utc_now
from eventstore.postgres import SCHEMA

__all__ = ["bench_database", "catchup", "group_commit", "reference"]

Payload = Callable[[str, int], bytes]
_COLUMNS = ["position", "stream", "seq", "type", "data", "created_at", "hash"]


@contextlib.asynccontextmanager
async def bench_database(admin_url: str) -> AsyncIterator[str]:
    """A fresh database for this run (dropped at the end); yields its URL."""
    name = f"runlog_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{admin_url.rpartition('/')[0]}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _schema(url: str) -> tuple[str, str]:
    """A fresh schema with the log's tables: (its name, a URL whose connections use it)."""
    schema = f"s_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path = "{schema}"')
        for statement in SCHEMA:
            await conn.execute(statement)
    finally:
        await conn.close()
    return schema, f"{url}?options={quote(f'-csearch_path={schema}')}"


async def group_commit(
    url: str, total: int, producers: int, payload: Payload
) -> tuple[float, list[float]]:
    _, schema_url = await _schema(url)
    store = await PostgresEventStore.open(schema_url)
    latencies: list[float] = []
    per_producer = total // producers

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
        await asyncio.gather(*(producer(p) for p in range(producers)))
        elapsed = time.perf_counter() - start
        head = await store.head()
        assert head == per_producer * producers, head
        assert (await store.verify()).ok
    finally:
        await store.close()
    return head / elapsed, latencies


def chained(plan: list[tuple[str, bytes]], created_at: str) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
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


async def reference(url: str, total: int, producers: int, batch: int, payload: Payload) -> float:
    schema, _ = await _schema(url)
    per_producer = total // producers
    plan = [(f"p{p}", payload(f"p{p}", i)) for i in range(per_producer) for p in range(producers)]
    rows = chained(plan, utc_now())
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'SET search_path = "{schema}"')
        insert = f"INSERT INTO events ({', '.join(_COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        start = time.perf_counter()
        for offset in range(0, len(rows), batch):
            async with conn.transaction():
                await conn.executemany(insert, rows[offset : offset + batch])
        elapsed = time.perf_counter() - start
        assert await conn.fetchval("SELECT count(*) FROM events") == len(rows)
    finally:
        await conn.close()
    return len(rows) / elapsed


async def catchup(
    url: str, events: int, target: str, target_events: int, calls: int, payload: Payload
) -> tuple[float, float]:
    """(store events/s, raw asyncpg events/s) reading the target stream of an
    ``events``-event log bulk-loaded with COPY."""
    schema, schema_url = await _schema(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'SET search_path = "{schema}"')
        streams = max(1, events // 100)
        every = max(1, events // target_events)
        seqs: dict[str, int] = {}
        previous = GENESIS_HASH
        created_at = utc_now()
        rows: list[tuple[object, ...]] = []
        written = 0
        for position in range(1, events + 1):
            if position % every == 0 and written < target_events:
                stream = target
                written += 1
            else:
                stream = f"run-{position % streams}"
            seq = seqs[stream] = seqs.get(stream, 0) + 1
            data = payload(stream, seq).decode()
            previous = chain_hash(
                previous, canonical_bytes(position, stream, seq, "Bench", data, created_at)
            )
            rows.append((position, stream, seq, "Bench", data, created_at, previous))
            if len(rows) == 100_000 or position == events:
                await conn.copy_records_to_table("events", records=rows, columns=_COLUMNS)
                rows.clear()
                print(f"  loaded {position:,}/{events:,} events", file=sys.stderr, flush=True)
        await conn.execute(
            "UPDATE events_head SET position = $1, hash = $2 WHERE id = 1", events, previous
        )
        await conn.execute("ANALYZE events")
        sql = (
            f"SELECT {', '.join(_COLUMNS)} FROM events WHERE stream = $1 AND seq > $2"
            " ORDER BY seq LIMIT $3"
        )
        expected = len(await conn.fetch(sql, target, 0, target_events))
        # The two are timed call by call in turn, so a change in the machine's load while
        # they run (a shared machine) weighs on both alike.
        store = await PostgresEventStore.open(schema_url)
        try:
            raw: list[float] = []
            timings: list[float] = []
            for _ in range(calls):
                start = time.perf_counter()
                fetched = await conn.fetch(sql, target, 0, target_events)
                raw.append(time.perf_counter() - start)
                assert len(fetched) == expected
                start = time.perf_counter()
                read = await store.read_stream(target, 0, target_events)
                timings.append(time.perf_counter() - start)
                assert len(read) == expected
        finally:
            await store.close()
    finally:
        await conn.close()
    return expected / statistics.median(timings), expected / statistics.median(raw)
