"""Property: whatever the interleaving of appends, the log is gapless and holds exactly them.

Hypothesis and async fixtures mix badly, so each example runs its own event loop on a fresh
store in a fresh directory (``open_backend`` is session-scoped and only knows how to open one).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import AppendRequest, NewEvent, RecordedEvent

STREAMS = ["a", "b", "run-1", "thread/ü", "日本"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)

# One append: (stream, payloads, as_append_many_with_a_second_stream)
append_op = st.tuples(
    st.sampled_from(STREAMS),
    st.lists(json_values, min_size=1, max_size=4),
    st.sampled_from([None, *STREAMS]),
)
# A round of appends fired concurrently; rounds run one after another.
rounds_strategy = st.lists(st.lists(append_op, min_size=1, max_size=6), min_size=1, max_size=6)


async def _run(opener: Any, directory: Path, rounds: list[list[Any]]) -> None:
    store = await opener(directory)
    try:
        # Every call's requests and what it returned.
        calls: list[tuple[list[tuple[str, list[bytes]]], list[RecordedEvent]]] = []

        async def one(stream: str, payloads: list[Any], second: str | None) -> None:
            encoded = [msgspec.json.encode(p) for p in payloads]
            requests = [(stream, encoded)]
            if second is None:
                recorded = await store.append(stream, [NewEvent("E", d) for d in encoded])
            else:
                requests.append((second, encoded[:1]))
                recorded = await store.append_many(
                    [
                        AppendRequest(stream, [NewEvent("E", d) for d in encoded]),
                        AppendRequest(second, [NewEvent("F", encoded[0])]),
                    ]
                )
            calls.append((requests, recorded))

        for round_ in rounds:
            await asyncio.gather(*(one(*op) for op in round_))

        log = await store.read_all(0, 10_000)
        total = sum(len(events) for requests, _ in calls for _, events in requests)
        assert [e.position for e in log] == list(range(1, total + 1))

        # Each call got back exactly its events, contiguous, in request order, byte for byte.
        returned: list[RecordedEvent] = []
        for requests, recorded in calls:
            expected = [(s, d) for s, events in requests for d in events]
            assert [(e.stream, e.data.encode()) for e in recorded] == expected
            positions = [e.position for e in recorded]
            assert positions == list(range(positions[0], positions[0] + len(positions)))
            returned.extend(recorded)
        assert sorted(returned, key=lambda e: e.position) == log

        by_stream: dict[str, list[RecordedEvent]] = defaultdict(list)
        for event in log:
            by_stream[event.stream].append(event)
        for stream, events in by_stream.items():
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert await store.read_stream(stream, 0, 10_000) == events
            assert await store.last_seq(stream) == len(events)
        assert await store.head() == total

        report = await store.verify()
        assert report.ok, report
        assert report.events == total
    finally:
        await store.close()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(rounds=rounds_strategy)
def test_random_interleavings_keep_the_log_gapless_and_exact(
    open_backend: Any, rounds: list[list[Any]]
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="eventstore-prop-"))
    try:
        asyncio.run(_run(open_backend, directory, rounds))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
