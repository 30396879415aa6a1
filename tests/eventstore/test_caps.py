"""Append caps: a count the writer checks inside the append transaction, with the head locked,
including the earlier appends of the same batch (the per-org cap on live runs)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from eventstore import AppendRefused, AppendRequest, Cap, NewEvent


def at_most(limit: int) -> Cap:
    """Refuse once ``limit`` streams named ``capped-*`` exist."""
    return Cap(
        "capped",
        "SELECT count(DISTINCT stream) FROM events WHERE stream >= ? AND stream < ?",
        ("capped-", "capped."),
        limit,
    )


def request(i: int, limit: int) -> list[AppendRequest]:
    return [
        AppendRequest(f"other-{i}", [NewEvent("x", b"{}")], None),
        AppendRequest(f"capped-{i}", [NewEvent("x", b"{}")], 0, cap=at_most(limit)),
    ]


async def test_a_cap_counts_the_earlier_appends_of_its_batch(store: Any) -> None:
    # Concurrent appends share batches: each cap counts the ones accepted before it.
    results = await asyncio.gather(
        *(store.append_many(request(i, 5)) for i in range(40)), return_exceptions=True
    )
    accepted = [r for r in results if isinstance(r, list)]
    refused = [r for r in results if isinstance(r, AppendRefused)]
    assert (len(accepted), len(refused)) == (5, 35)
    assert {r.details["count"] for r in refused} == {5}
    # A refused append wrote nothing, on either of its streams.
    streams = {e.stream for e in await store.read_all(0, 1000)}
    assert len(streams) == 10
    assert await store.head() == 10
    report = await store.verify()
    assert report.ok


async def test_a_refused_append_does_not_fail_its_neighbours(store: Any) -> None:
    await store.append_many(request(0, 1))
    plain = [store.append(f"plain-{i}", [NewEvent("x", b"{}")]) for i in range(5)]
    capped = store.append_many(request(1, 1))
    *ok, refused = await asyncio.gather(*plain, capped, return_exceptions=True)
    assert all(isinstance(r, list) for r in ok)
    assert isinstance(refused, AppendRefused)
    with pytest.raises(AppendRefused):
        await store.append_many(request(2, 1))
    assert await store.head() == 2 + 5
