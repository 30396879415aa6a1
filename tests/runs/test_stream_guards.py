"""The guard of the open SSE streams: an ending published ends exactly the streams of that key
or user; one published between a request's authentication and its stream's registration is
caught by a read of the credential; a token's streams end at its expiry. (The same through a
real server and the admin CLI: tests/durability/test_stream_credentials.py.)"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
import structlog
from structlog.testing import capture_logs

from eventstore import RecordedEvent
from projections.queries import Queries
from runs.credentials import StreamGuards
from runs.events import ApiKeyRevoked, UserDeleted, encode_event
from runs.service import Principal

_positions = itertools.count(1)


def ending(event: ApiKeyRevoked | UserDeleted) -> RecordedEvent:
    position = next(_positions)
    encoded = encode_event(event)
    return RecordedEvent(
        position,
        "org-o",
        position,
        event.TYPE,
        encoded.data.decode(),
        "2026-01-01T00:00:00.000Z",
        "",
    )


class FakeQueries:
    """The two reads a guard makes, answered from sets; ``during_read`` runs inside each, after
    its answer is taken (a commit the read does not see)."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.deleted: set[str] = set()
        self.reads = 0
        self.during_read: Callable[[], None] = lambda: None

    async def api_key_standing(self, key_id: str) -> dict[str, Any]:
        self.reads += 1
        row = {
            "org_id": "o",
            "revoked_at": "then" if key_id in self.revoked else None,
            "user_deleted_at": None,
        }
        self.during_read()  # after the read's snapshot: it does not see what this does
        await asyncio.sleep(0)
        return row

    async def user(self, user_id: str) -> dict[str, Any]:
        self.reads += 1
        row = {"deleted_at": "then" if user_id in self.deleted else None}
        self.during_read()
        await asyncio.sleep(0)
        return row


def guards_of(queries: FakeQueries) -> StreamGuards:
    return StreamGuards(cast(Queries, queries))


def stream_task() -> asyncio.Task[None]:
    return asyncio.create_task(asyncio.sleep(30))


async def ended(task: asyncio.Task[None]) -> bool:
    await asyncio.sleep(0)  # a cancelled task ends at its next step
    await asyncio.sleep(0)
    return task.cancelled()


async def test_an_ending_ends_the_streams_of_that_key_or_user_only() -> None:
    queries = FakeQueries()
    guards = guards_of(queries)
    key_1, key_2 = Principal("u1", "o", key_id="k1"), Principal("u1", "o", key_id="k2")
    token = Principal("u2", "o", expires_at=time.time() + 60)
    tasks = [stream_task() for _ in range(3)]
    for who, task in zip((key_1, key_2, token), tasks, strict=True):
        await guards.guard(who, task, guards.endings)
    assert queries.reads == 0  # nothing ended since the requests were authenticated
    assert len(guards) == 3

    guards.observe([ending(ApiKeyRevoked(key_id="k1"))])
    assert [await ended(t) for t in tasks] == [True, False, False]
    guards.observe([ending(ApiKeyRevoked(key_id="k9")), ending(UserDeleted(user_id="u1"))])
    assert [await ended(t) for t in tasks] == [True, True, False]
    guards.observe([ending(UserDeleted(user_id="u2"))])
    assert [await ended(t) for t in tasks] == [True, True, True]


async def test_an_ending_published_before_the_stream_is_registered_is_read_from_the_model() -> None:
    queries = FakeQueries()
    guards = guards_of(queries)
    seen = guards.endings  # the request authenticates...
    queries.revoked.add("k1")
    guards.observe([ending(ApiKeyRevoked(key_id="k1"))])  # ...and then the key is revoked
    revoked, other = stream_task(), stream_task()
    await guards.guard(Principal("u1", "o", key_id="k1"), revoked, seen)
    await guards.guard(Principal("u1", "o", key_id="k2"), other, seen)
    assert queries.reads == 2
    assert await ended(revoked)
    assert not await ended(other)
    assert len(guards) == 1  # the revoked key's stream was never registered
    other.cancel()


async def test_an_ending_published_during_that_read_is_read_again() -> None:
    queries = FakeQueries()
    guards = guards_of(queries)
    seen = guards.endings
    guards.observe([ending(UserDeleted(user_id="someone else"))])

    def revoke_meanwhile() -> None:  # committed and published while the first read runs
        queries.during_read = lambda: None
        queries.revoked.add("k1")
        guards.observe([ending(ApiKeyRevoked(key_id="k1"))])

    queries.during_read = revoke_meanwhile
    task = stream_task()
    await guards.guard(Principal("u1", "o", key_id="k1"), task, seen)
    assert queries.reads == 2
    assert await ended(task)
    assert len(guards) == 0


async def test_a_token_stream_ends_at_its_expiry_unless_it_ended_before() -> None:
    guards = guards_of(FakeQueries())
    soon = Principal("u1", "o", expires_at=time.time() + 0.05)
    expiring, released = stream_task(), stream_task()
    await guards.guard(soon, expiring, guards.endings)
    release = await guards.guard(soon, released, guards.endings)
    release()  # its stream ended first: the timer is gone with it
    assert len(guards) == 1
    await asyncio.sleep(0.2)
    assert expiring.cancelled()
    assert not released.done()
    released.cancel()


@pytest.mark.parametrize("who", [Principal("u1", "o", key_id="k1"), Principal("u1", "o")])
async def test_a_released_stream_is_forgotten(who: Principal) -> None:
    guards = guards_of(FakeQueries())
    task = stream_task()
    release = await guards.guard(who, task, guards.endings)
    release()
    assert len(guards) == 0
    guards.observe([ending(ApiKeyRevoked(key_id="k1")), ending(UserDeleted(user_id="u1"))])
    assert not await ended(task)
    task.cancel()


async def test_the_ending_is_logged_with_the_streams_trace_id() -> None:
    guards = guards_of(FakeQueries())
    task = stream_task()
    structlog.contextvars.bind_contextvars(trace_id="the-stream")
    try:
        await guards.guard(Principal("u1", "o", key_id="k1"), task, guards.endings)
    finally:
        structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(trace_id="the-revocation")
    try:
        with capture_logs() as logs:
            guards.observe([ending(ApiKeyRevoked(key_id="k1"))])
    finally:
        structlog.contextvars.clear_contextvars()
    assert await ended(task)
    assert [(e["event"], e["reason"], e["trace_id"]) for e in logs] == [
        ("stream.credential_ended", "revoked", "the-stream")
    ]
