"""Helpers for the HTTP tests of issue 3."""

from __future__ import annotations

import asyncio
from typing import Any

from runs.events import run_stream
from tests.conftest import Api

TERMINAL = frozenset({"completed", "failed", "cancelled"})


async def wait_run(
    api: Api,
    run_id: str,
    statuses: set[str] | None = None,
    timeout: float = 10.0,
    key: str | None = None,
) -> dict[str, Any]:
    """Await the run reaching one of ``statuses`` (default: any terminal one).

    Unlike ``Api.wait_for`` it reads the run's last seq *before* reading its status, so an
    event committed between the two reads wakes the subscription at once instead of being
    missed (``Api.wait_for`` can hang until its timeout when the run ends in that window).
    """
    wanted = statuses or TERMINAL
    store = api.runtime.store
    stream = run_stream(run_id)
    async with asyncio.timeout(timeout):
        while True:
            last = await store.last_seq(stream)
            _, run = await api.request("GET", f"/v1/runs/{run_id}", key=key, expect=200)
            if run["status"] in wanted:
                return dict(run)
            events = store.subscribe(stream, last)
            try:
                await anext(events)
            finally:
                await events.aclose()
