"""Run leases and the shared failure counts: the coordination tables beside the log.

On SQLite one process serves the log, so its leases are an in-memory set; on PostgreSQL two
owners (two processes) contend for the same rows of ``run_leases``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from eventstore import Coordination, open_coordination
from tests.postgres import fresh_schema

Opener = Callable[[str, float], Awaitable[Coordination]]


async def _opener(location: str) -> AsyncIterator[Opener]:
    opened: list[Coordination] = []

    async def open_(owner: str, lease_seconds: float = 10.0) -> Coordination:
        coordination = await open_coordination(location, owner, lease_seconds)
        opened.append(coordination)
        return coordination

    yield open_
    for item in opened:
        await item.close()


@pytest.fixture
async def coordination(log_location: str) -> AsyncIterator[Opener]:
    """Coordination on each backend in turn."""
    async for opener in _opener(log_location):
        yield opener


@pytest.fixture
async def shared(pg_url: str) -> AsyncIterator[Opener]:
    """Coordination on PostgreSQL, where several processes (owners) share the log: on SQLite
    one process serves it, so nobody else could hold, take over or count."""
    async for opener in _opener(fresh_schema(pg_url)):
        yield opener


async def test_a_lease_is_taken_renewed_and_released(coordination: Opener) -> None:
    leases = (await coordination("a", 10.0)).leases
    assert await leases.acquire("run-1")
    assert await leases.acquire("run-1")  # already ours
    assert await leases.acquire("run-2")
    assert await leases.renew() == {"run-1", "run-2"}
    assert await leases.unheld(["run-1", "run-3"]) == ["run-3"]
    assert await leases.lapsed() == []
    await leases.release("run-1")
    assert await leases.renew() == {"run-2"}
    assert await leases.unheld(["run-1", "run-2"]) == ["run-1"]


async def test_only_one_owner_holds_a_lease(shared: Opener) -> None:
    a = (await shared("a", 10.0)).leases
    b = (await shared("b", 10.0)).leases
    results = await asyncio.gather(*(x.acquire("run-1") for x in [a, b] * 10))
    winners = {owner for owner, won in zip(["a", "b"] * 10, results, strict=True) if won}
    assert len(winners) == 1
    winner, loser = (a, b) if winners == {"a"} else (b, a)
    assert await winner.renew() == {"run-1"}
    assert await loser.renew() == set()
    await loser.release("run-1")  # not the loser's: nothing happens
    assert not await loser.acquire("run-1")
    await winner.release("run-1")
    assert await loser.acquire("run-1")


async def test_an_expired_lease_is_taken_over(shared: Opener) -> None:
    dead = (await shared("dead", 0.3)).leases
    alive = (await shared("alive", 10.0)).leases
    assert await dead.acquire("run-1")
    assert await dead.acquire("run-2")
    assert not await alive.acquire("run-1")
    assert await alive.unheld(["run-1", "run-2"]) == []
    async with asyncio.timeout(30):
        while sorted(await alive.lapsed()) != ["run-1", "run-2"]:
            await asyncio.sleep(0.05)
    assert sorted(await alive.unheld(["run-1", "run-2"])) == ["run-1", "run-2"]
    assert await alive.acquire("run-1")
    # The old holder's renewal no longer covers the run it lost (it renews what it still has).
    assert await dead.renew() == {"run-2"}
    assert await alive.renew() == {"run-1"}
    assert "run-1" not in await alive.lapsed()


async def test_release_all_lets_every_lease_lapse_at_once(shared: Opener) -> None:
    stopping = (await shared("stopping", 60.0)).leases
    other = (await shared("other", 60.0)).leases
    for run_id in ("run-1", "run-2", "run-3"):
        assert await stopping.acquire(run_id)
    assert await other.lapsed() == []
    await stopping.release_all()
    assert sorted(await other.lapsed()) == ["run-1", "run-2", "run-3"]
    assert await other.acquire("run-2")
    # forget drops a lapsed lease (a run with nothing left to drive), never a held one.
    await other.forget("run-1")
    await other.forget("run-2")
    assert sorted(await other.lapsed()) == ["run-3"]
    assert await other.renew() == {"run-2"}


async def test_a_sqlite_log_counts_failures_in_memory(tmp_path: Path) -> None:
    coordination = await open_coordination(str(tmp_path / "runlog.db"), "a", 10.0)
    assert coordination.failures is None  # the only process counts them
    assert not coordination.leases.shared
    await coordination.close()


async def test_failure_counts_are_shared(shared: Opener) -> None:
    a = await shared("a", 10.0)
    b = await shared("b", 10.0)
    assert a.failures is not None and b.failures is not None
    await a.failures.add(["user:1", "address:x"], 60)
    await b.failures.add(["user:1"], 60)
    recent = await a.failures.recent(["user:1", "address:x", "user:2"], 60)
    assert {key: count for key, (count, _) in recent.items()} == {"user:1": 2, "address:x": 1}
    assert all(0 <= age < 30 for _, age in recent.values())
    await b.failures.clear("user:1")
    assert set(await a.failures.recent(["user:1", "address:x"], 60)) == {"address:x"}
    # Outside the window a failure no longer counts.
    assert await a.failures.recent(["address:x"], 0.000001) == {}
