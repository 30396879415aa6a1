"""A long-lived response (an SSE stream) lives only as long as the credential that opened it.

:class:`StreamGuards` hears ``api_key.revoked`` and ``user.deleted`` from the log's live hub as
they are published, whichever process appended them (the admin CLI, usually), and ends the
streams they concern; it ends an access token's streams at its expiry. No polling.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import structlog

from eventstore import RecordedEvent
from projections.queries import Queries
from runs.events import ApiKeyRevoked, UserDeleted
from runs.service import Principal

__all__ = ["KeyCache", "StreamGuards"]

log = structlog.get_logger("runlog.auth")

_key_revoked = msgspec.json.Decoder(ApiKeyRevoked)
_user_deleted = msgspec.json.Decoder(UserDeleted)


#: The events after which a verified API key may no longer be valid.
_ENDINGS = frozenset({ApiKeyRevoked.TYPE, UserDeleted.TYPE})


class KeyCache:
    """Who each recently verified API key is, by the key's SHA-256: a request with a known key
    skips the lookup. Only valid keys are kept (at most ``size``, least recently used first
    out), and every ``api_key.revoked`` or ``user.deleted`` that commits empties the cache
    before anything else runs: :meth:`observe` is a watcher of the store's live hub, which
    hears this process's commits as they complete and, on SQLite, another process's (the admin
    CLI's) when that process touches the log (``eventstore/watch.py``), which it does before its
    command returns, so a request sent after a revocation finds the key gone. A lookup that was
    in flight while the cache was emptied is not cached (:attr:`generation`)."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.generation = 0
        self._principals: collections.OrderedDict[str, Principal] = collections.OrderedDict()

    def get(self, key_sha256: str) -> Principal | None:
        who = self._principals.get(key_sha256)
        if who is not None:
            self._principals.move_to_end(key_sha256)
        return who

    def put(self, key_sha256: str, who: Principal, generation: int) -> None:
        """Remember ``who``, looked up when the cache was at ``generation``."""
        if generation != self.generation:
            return  # a revocation committed during the lookup: its answer may be stale
        self._principals[key_sha256] = who
        if len(self._principals) > self.size:
            self._principals.popitem(last=False)

    def observe(self, events: Iterable[RecordedEvent]) -> None:
        if any(event.type in _ENDINGS for event in events):
            self.generation += 1
            self._principals.clear()

    def __len__(self) -> int:
        return len(self._principals)


async def _still_valid(queries: Queries, who: Principal) -> bool:
    if who.key_id is None:  # an access token: its user
        user = await queries.user(who.user_id)
        return user is not None and user["deleted_at"] is None
    key = await queries.api_key_standing(who.key_id)
    return (
        key is not None
        and key["org_id"] == who.org_id
        and key["revoked_at"] is None
        and key["user_deleted_at"] is None
    )


class StreamGuards:
    """The open SSE streams by the credential each was opened with: an ``api_key.revoked`` or
    ``user.deleted`` ends the streams of that key or user as it is published, and an access
    token's expiry ends its streams on time (one timer each).

    :meth:`observe` is a watcher of the store's live hub, one for every stream. It hears this
    process's commits as they complete and another process's (the admin CLI's) as this one
    learns of them (``eventstore/watch.py`` on SQLite, notifications on PostgreSQL): a stream
    ends as soon as it would following its org's stream itself, without a task, a query and a
    subscription of its own.

    A stream is registered once its request was authenticated, and an ending published in
    between would pass the watcher by. :attr:`endings` counts the endings published: a request
    notes it before it authenticates, and a stream for which it has moved since has its
    credential read from the read model before it is registered (again while endings are
    published during that read)."""

    def __init__(self, queries: Queries) -> None:
        self.queries = queries
        self.endings = 0
        # The streams' tasks by key id and by user id, each with its request's trace id.
        self._by_key: dict[str, dict[asyncio.Task[Any], str | None]] = {}
        self._by_user: dict[str, dict[asyncio.Task[Any], str | None]] = {}

    def observe(self, events: Iterable[RecordedEvent]) -> None:
        for event in events:
            if event.type == ApiKeyRevoked.TYPE:
                ended = self._by_key.get(_key_revoked.decode(event.data).key_id)
            elif event.type == UserDeleted.TYPE:
                ended = self._by_user.get(_user_deleted.decode(event.data).user_id)
            else:
                continue
            self.endings += 1
            for owner, trace_id in list((ended or {}).items()):
                _end(owner, "revoked", trace_id)

    async def guard(
        self, who: Principal, owner: asyncio.Task[Any], endings_seen: int
    ) -> Callable[[], None]:
        """Keep ``owner`` (the stream's task) only while ``who``'s credential stands; returns
        the function that lets it go, for the stream's end. ``endings_seen``: :attr:`endings`
        before the request was authenticated."""
        # The ending's log line carries the stream's trace id, not the publisher's.
        trace_id = structlog.contextvars.get_contextvars().get("trace_id")
        while endings_seen != self.endings:
            endings_seen = self.endings
            if not await _still_valid(self.queries, who):
                _end(owner, "revoked", trace_id)
                return _nothing
        # No await from here on: registered before the next ending can be published.
        key_id = who.key_id
        if key_id is not None:
            self._by_key.setdefault(key_id, {})[owner] = trace_id
        self._by_user.setdefault(who.user_id, {})[owner] = trace_id
        timer = None
        if who.expires_at is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(0.0, who.expires_at - time.time())
            timer = loop.call_at(deadline, _end, owner, "expired", trace_id)

        def release() -> None:
            if timer is not None:
                timer.cancel()
            if key_id is not None:
                _forget(self._by_key, key_id, owner)
            _forget(self._by_user, who.user_id, owner)

        return release

    def __len__(self) -> int:
        """How many streams are guarded."""
        return sum(len(owners) for owners in self._by_user.values())


def _end(owner: asyncio.Task[Any], reason: str, trace_id: str | None) -> None:
    if not owner.done():
        log.info("stream.credential_ended", reason=reason, trace_id=trace_id)
        owner.cancel()


def _forget(
    owners: dict[str, dict[asyncio.Task[Any], str | None]], key: str, owner: asyncio.Task[Any]
) -> None:
    tasks = owners.get(key)
    if tasks is not None:
        tasks.pop(owner, None)
        if not tasks:
            del owners[key]


def _nothing() -> None:
    return None
