"""Optimistic concurrency under a real race: many writers, one stream, one winner per seq."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import msgspec

from eventstore import ConcurrencyError, NewEvent

RACERS = 50
TARGET_SEQ = 300


async def test_fifty_racers_on_one_stream_one_winner_per_seq(store: Any) -> None:
    wins: list[tuple[int, bytes]] = []
    losses: list[tuple[int, ConcurrencyError]] = []

    async def racer(racer_id: int) -> None:
        attempt = 0
        while (seq := await store.last_seq("hot")) < TARGET_SEQ:
            attempt += 1
            payload = msgspec.json.encode({"racer": racer_id, "attempt": attempt})
            try:
                [event] = await store.append("hot", [NewEvent("Won", payload)], seq)
            except ConcurrencyError as exc:
                losses.append((seq, exc))
                continue
            assert event.seq == seq + 1
            wins.append((event.seq, payload))

    async with asyncio.timeout(60):
        await asyncio.gather(*(racer(r) for r in range(RACERS)))

    stream = await store.read_stream("hot", 0, TARGET_SEQ + 10)
    assert [e.seq for e in stream] == list(range(1, TARGET_SEQ + 1))
    # Exactly one winner per seq, and each winner's payload is stored once, at its seq.
    assert sorted(seq for seq, _ in wins) == list(range(1, TARGET_SEQ + 1))
    assert [e.data.encode() for e in stream] == [payload for _, payload in sorted(wins)]
    assert max(Counter(e.data for e in stream).values()) == 1
    assert losses, "the racers never collided: the test did not race"
    assert all(exc.expected_seq == seq < exc.actual_seq for seq, exc in losses)
    assert await store.head() == TARGET_SEQ
    assert (await store.verify()).ok
