"""A long-lived response (an SSE stream) lives only as long as the credential that opened it.

The guard follows the caller's org stream from the log, so it learns of ``api_key.revoked`` and
``user.deleted`` as they commit, whichever process appended them (the admin CLI, usually), and
it ends its response at the access token's expiry. It waits on the log's live notification and
on one timer for the expiry: no polling.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import structlog

from eventstore import EventStore, RecordedEvent
from projections.queries import Queries
from runs.events import ApiKeyRevoked, UserDeleted, org_stream
from runs.service import Principal

__all__ = ["KeyCache", "credential_ended", "guard_credential"]

log = structlog.get_logger("runlog.auth")

_key_revoked = msgspec.json.Decoder(ApiKeyRevoked)
_user_deleted = msgspec.json.Decoder(UserDeleted)


def credential_ended(who: Principal, event_type: str, data: str) -> bool:
    """Whether an org event ends ``who``'s credential."""
    if event_type == ApiKeyRevoked.TYPE and who.key_id is not None:
        return _key_revoked.decode(data).key_id == who.key_id
    if event_type == UserDeleted.TYPE:
        return _user_deleted.decode(data).user_id == who.user_id
    return False


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
    user = await queries.user(who.user_id)
    if user is None or user["deleted_at"] is not None:
        return False
    if who.key_id is None:
        return True
    keys = await queries.api_keys(who.org_id)
    return any(k["key_id"] == who.key_id and k["revoked_at"] is None for k in keys)


async def guard_credential(
    store: EventStore, queries: Queries, who: Principal, owner: asyncio.Task[Any]
) -> None:
    """Cancel ``owner`` when ``who``'s credential is revoked, deleted or expires."""
    stream = org_stream(who.org_id)
    # The cursor first, then the credential's state: a revocation that committed after the
    # request was authenticated is in the state read here or after the cursor.
    cursor = await store.last_seq(stream)
    if not await _still_valid(queries, who):
        log.info("stream.credential_ended", reason="revoked")
        owner.cancel()
        return
    expiry = None
    if who.expires_at is not None:
        expiry = asyncio.create_task(asyncio.sleep(max(0.0, who.expires_at - time.time())))
    events = store.subscribe(stream, cursor)
    revoked = asyncio.create_task(_first_ending(events, who))
    try:
        done, _ = await asyncio.wait(
            [t for t in (expiry, revoked) if t is not None], return_when=asyncio.FIRST_COMPLETED
        )
        if any(not t.cancelled() and t.exception() is None for t in done):
            log.info("stream.credential_ended", reason="expired" if expiry in done else "revoked")
            owner.cancel()
    finally:
        for task in (expiry, revoked):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await events.aclose()


async def _first_ending(events: Any, who: Principal) -> None:
    async for event in events:
        if credential_ended(who, event.type, event.data):
            return
    # The store closed (shutdown): never report an ending.
    await asyncio.Event().wait()
