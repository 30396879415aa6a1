"""The read models kept inside each append: an event is decoded once for all of them, however
many use it (a run's end is used by the threads, runs and usage models)."""

from __future__ import annotations

import pytest

from eventstore import RecordedEvent
from projections import all_projections, base
from runs.events import RunCompleted
from tests.conftest import Api, spy_on


async def test_each_event_is_decoded_once_for_every_read_model(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = all_projections()
    users = [m for m in models if RunCompleted.TYPE in getattr(m, "event_types", ())]
    assert len(users) >= 2  # else the test would show nothing
    decoded: list[RecordedEvent] = spy_on(monkeypatch, base, "decode_event")
    store = api.runtime.store
    head = await store.head()
    _, run_id = await api.start_run("hello")
    await api.wait_for(run_id)
    logged = await store.read_all(head, 1000)
    used = set().union(*(getattr(m, "event_types", ()) for m in models))
    assert RunCompleted.TYPE in {e.type for e in logged}
    # An event is decoded inside its append's transaction, so before it can be read; one
    # committed after the read above is left out.
    seen = [e.position for e in decoded if e.position <= logged[-1].position]
    assert seen == [e.position for e in logged if e.type in used]
