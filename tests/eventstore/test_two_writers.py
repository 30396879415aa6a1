"""Two stores (as two processes would be) taking turns on one log: each keeps its seq cache
right by reading what the other wrote since its own last commit."""

from __future__ import annotations

from typing import Any

import pytest

from eventstore import ConcurrencyError, NewEvent


async def test_writers_taking_turns_keep_every_streams_seq_right(store_factory: Any) -> None:
    a = await store_factory()
    b = await store_factory()
    event = [NewEvent("T", b"{}")]
    for stream in ("shared", "mine", "theirs"):
        await a.append(stream, event)  # a caches all three streams
    for _ in range(3):
        await b.append("shared", event)
        await b.append("theirs", event)
    # a's next batch sees b's events: the cached seqs of the streams b wrote move on.
    [shared] = await a.append("shared", event)
    assert shared.seq == 5
    [mine] = await a.append("mine", event, 1)
    assert mine.seq == 2
    with pytest.raises(ConcurrencyError):
        await a.append("theirs", event, 1)
    [theirs] = await a.append("theirs", event, 4)
    assert theirs.seq == 5
    for _ in range(2):  # and the other way round
        await a.append("mine", event)
    [mine] = await b.append("mine", event, 4)
    assert mine.seq == 5
    assert (await a.verify()).ok
