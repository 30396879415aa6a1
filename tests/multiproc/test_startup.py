"""Processes that start together on one empty PostgreSQL database prepare it once."""

from __future__ import annotations

import asyncio

from eventstore import open_event_store, startup_lock
from projections import all_projections
from projections.queries import Queries
from runs.personas import PersonaRegistry
from runs.service import Accounts
from runs.startup import bootstrap, record_personas


async def _start(db: str) -> str | None:
    """What a serving process does first, on its own store (as another machine would)."""
    store = await open_event_store(db, all_projections())
    try:
        async with startup_lock(db):
            await record_personas(store, Queries(store), PersonaRegistry.from_dirs(None))
            # Give the other starters every chance to interleave with this one.
            await asyncio.sleep(0.05)
            return await bootstrap(Accounts(store), {})
    finally:
        await store.close()


async def test_concurrent_first_starts_make_one_org_and_record_each_persona_once(
    pg_db: str,
) -> None:
    keys = await asyncio.gather(*(_start(pg_db) for _ in range(4)))

    assert len([key for key in keys if key is not None]) == 1
    store = await open_event_store(pg_db, all_projections())
    try:
        assert await Queries(store).org_count() == 1
        personas = await store.fetch_all(
            "SELECT stream, count(*) FROM events WHERE type = 'persona.recorded' GROUP BY stream"
        )
        assert personas
        assert all(count == 1 for _, count in personas), personas
    finally:
        await store.close()
