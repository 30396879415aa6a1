"""A PostgreSQL store opens (schema, projections) beside another store's busy writer, as a
restarted worker does beside the others: no deadlock, and no append of theirs fails."""

from __future__ import annotations

import asyncio
import time

from eventstore import NewEvent
from eventstore.postgres import PostgresEventStore
from projections import all_projections
from tests.postgres import fresh_schema


async def test_a_store_opens_beside_busy_writers(pg_url: str) -> None:
    url = fresh_schema(pg_url)
    busy = await PostgresEventStore.open(url, all_projections())
    stop_at = time.monotonic() + 4
    appended = 0

    async def writer(task: int) -> None:
        nonlocal appended
        while time.monotonic() < stop_at:
            await busy.append(f"w-{task}", [NewEvent("Busy", b"{}")])
            appended += 1

    async def openings() -> int:
        opened = 0
        while time.monotonic() < stop_at:
            store = await PostgresEventStore.open(url, all_projections())
            await store.close()
            opened += 1
        return opened

    try:
        async with asyncio.timeout(60):
            results = await asyncio.gather(*(writer(t) for t in range(20)), openings())
        assert results[-1] >= 2
        assert appended > 100
        assert (await busy.verify()).ok
    finally:
        await busy.close()
