"""The cache of verified API keys: bounded, emptied by every revocation or user deletion, and
never filled with the answer of a lookup that a revocation overtook."""

from __future__ import annotations

from eventstore import RecordedEvent
from runs.credentials import KeyCache
from runs.service import Principal


def event(type_: str, position: int = 1) -> RecordedEvent:
    return RecordedEvent(position, "org-x", position, type_, "{}", "2026-01-01T00:00:00.000Z", "")


def test_a_verified_key_is_remembered_until_a_revocation_or_deletion() -> None:
    cache = KeyCache()
    who = Principal("u", "o", key_id="k")
    cache.put("a", who, cache.generation)
    assert cache.get("a") is who
    cache.observe([event("thread.created"), event("api_key.created")])
    assert cache.get("a") is who
    cache.observe([event("thread.created"), event("api_key.revoked")])
    assert cache.get("a") is None
    cache.put("a", who, cache.generation)
    cache.observe([event("user.deleted")])
    assert cache.get("a") is None


def test_a_lookup_overtaken_by_a_revocation_is_not_remembered() -> None:
    cache = KeyCache()
    generation = cache.generation  # the lookup starts
    cache.observe([event("api_key.revoked")])  # commits while the lookup runs
    cache.put("a", Principal("u", "o", key_id="k"), generation)
    assert cache.get("a") is None
    assert len(cache) == 0


def test_the_cache_keeps_the_most_recently_used_keys() -> None:
    cache = KeyCache(size=2)
    for name in "abc":
        cache.put(name, Principal(name, "o", key_id=name), cache.generation)
        if name == "b":
            assert cache.get("a") is not None  # a is now more recent than b
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.get("c") is not None
