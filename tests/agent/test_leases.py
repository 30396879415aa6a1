"""The supervisor under leases, in one process on a PostgreSQL log (the processes' view is in
tests/multiproc): a task whose lease another process took stops without appending, and a lease
left with no task behind it is given up."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from tests.agent.conftest import events_of
from tests.conftest import ADMIN_KEY, Api, app_factory
from tests.postgres import fresh_schema


async def short_lease_api(aiohttp_client: Any, pg_url: str) -> tuple[str, Api]:
    """The app on a fresh PostgreSQL schema with leases of 0.6 s (renewed every 0.2 s)."""
    location = fresh_schema(pg_url)
    client = await aiohttp_client(app_factory(location)(lease_seconds=0.6))
    return location, Api(client, ADMIN_KEY)


async def test_a_task_that_lost_its_lease_stops_without_appending(
    aiohttp_client: Any, pg_url: str
) -> None:
    location, api = await short_lease_api(aiohttp_client, pg_url)
    supervisor = api.runtime.supervisor
    _, run_id = await api.start_run("/slow 100\n" + " ".join(f"w{i}" for i in range(200)))
    await api.wait_for(run_id, {"running"}, timeout=60)
    async with asyncio.timeout(60):
        while run_id not in supervisor._executors:
            await asyncio.sleep(0.01)
    # Another process takes the lease (as if ours had lapsed).
    with psycopg.connect(location, autocommit=True) as conn:
        conn.execute(
            "UPDATE run_leases SET owner = 'elsewhere', expires_at = now() + interval '1 hour'"
            " WHERE run_id = %s",
            (run_id,),
        )
    async with asyncio.timeout(60):  # the next renewal (every 0.2 s) finds it gone
        while run_id in supervisor.tasks:
            await asyncio.sleep(0.01)
    # An append already on its way when the task stopped still lands (appends are shielded
    # from cancellation; expected_seq is what fences them): count from after it.
    await asyncio.sleep(0.5)
    head = await api.runtime.store.head()
    await asyncio.sleep(1.0)  # the run would have streamed on (a delta every 0.1 s)
    assert await api.runtime.store.head() == head
    _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
    assert run["status"] == "running"  # the other process drives it now
    # Nor is the run taken back: its lease is held (by the other process).
    await asyncio.sleep(1.0)
    assert run_id not in supervisor.tasks


async def test_a_lease_without_a_task_is_given_up(aiohttp_client: Any, pg_url: str) -> None:
    _, api = await short_lease_api(aiohttp_client, pg_url)
    supervisor = api.runtime.supervisor
    assert await supervisor.leases.acquire("stray-run")  # no claim, no task
    async with asyncio.timeout(30):
        while "stray-run" in await supervisor.leases.renew():
            await asyncio.sleep(0.05)


async def test_input_while_another_process_holds_the_lease_is_not_stranded(
    aiohttp_client: Any, pg_url: str
) -> None:
    location, api = await short_lease_api(aiohttp_client, pg_url)
    supervisor = api.runtime.supervisor
    _, run_id = await api.start_run("/ask what colour?")
    await api.wait_for(run_id, {"waiting_for_input"}, timeout=60)
    async with asyncio.timeout(60):
        while run_id in supervisor.tasks:
            await asyncio.sleep(0.01)
    # Another process's task is still finishing the step that asked (it holds the lease, and
    # then dies without giving it up).
    with psycopg.connect(location, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO run_leases (run_id, owner, expires_at)"
            " VALUES (%s, 'elsewhere', now() + interval '3 seconds')",
            (run_id,),
        )
    await api.request("POST", f"/v1/runs/{run_id}/input", json={"content": "blue"}, expect=200)
    assert run_id not in supervisor.tasks  # not ours to drive while the other holds it
    run = await api.wait_for(run_id, {"completed"}, timeout=60)
    assert run["status"] == "completed"
    types = [t for t, _ in await events_of(api, run_id)]
    assert types.count("run.resumed") == 1  # taken over once the other's lease lapsed
    assert types[-1] == "run.completed"
