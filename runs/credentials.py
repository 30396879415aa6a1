"""A long-lived response (an SSE stream) lives only as long as the credential that opened it.

The guard follows the caller's org stream from the log, so it learns of ``api_key.revoked`` and
``user.deleted`` as they commit, whichever process appended them (the admin CLI, usually), and
it ends its response at the access token's expiry. It waits on the log's live notification and
on one timer for the expiry: no polling.
"""

from __future__ import annotations

import asyncio
import collections
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
    deadline = None
    if who.expires_at is not None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, who.expires_at - time.time())
    # Waits in this task (no task of its own for the subscription or the expiry).
    events = store.subscribe(stream, cursor)
    try:
        async with asyncio.timeout_at(deadline):
            await _first_ending(events, who)
        reason = "revoked"
    except TimeoutError:
        reason = "expired"
    finally:
        await events.aclose()
    log.info("stream.credential_ended", reason=reason)
    owner.cancel()


async def _first_ending(events: Any, who: Principal) -> None:
    async for event in events:
        if credential_ended(who, event.type, event.data):
            return
    # The store closed (shutdown): never report an ending.
    await asyncio.Event().wait()
