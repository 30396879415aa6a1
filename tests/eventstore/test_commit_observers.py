"""Commit observers: told about every commit (its events and its time) after it is durable; one
that raises never stops the writer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from eventstore import ConcurrencyError, NewEvent, RecordedEvent


def event(n: int) -> NewEvent:
    return NewEvent("thing.happened", b'{"n": %d}' % n)


async def test_observers_see_each_commit_and_a_failing_one_is_ignored(store: Any) -> None:
    seen: list[tuple[list[RecordedEvent], float]] = []

    def broken(events: Sequence[RecordedEvent], seconds: float) -> None:
        raise RuntimeError("an observer's bug")

    def record(events: Sequence[RecordedEvent], seconds: float) -> None:
        seen.append((list(events), seconds))

    store.commit_observers.extend([broken, record])
    first = await store.append("s-1", [event(1), event(2)], 0)
    assert seen == [(first, seen[0][1])]
    assert seen[0][1] > 0
    # Concurrent appends share commits: every recorded event is seen exactly once.
    results = await asyncio.gather(*(store.append(f"s-{n}", [event(n)], 0) for n in range(2, 12)))
    observed = [e for events, _ in seen for e in events]
    assert observed == first + sorted((r[0] for r in results), key=lambda e: e.position)
    # A commit whose only append is refused records nothing, and is still observed.
    before = len(seen)
    with pytest.raises(ConcurrencyError):
        await store.append("s-1", [event(99)], 0)
    assert seen[before:] == [([], seen[-1][1])]
    # The writer still works.
    assert (await store.append("s-1", [event(3)], 2))[0].seq == 3
