"""A log written by an earlier release opens in this one, with every run and its history."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from eventstore import connect_database
from projections import all_projections, rebuild, table_rows
from tests.conftest import Api

RELEASE_LOG = Path(__file__).parent.parent / "data" / "release-0.1.0.db"
RELEASE_KEY = "rl_release_fixture_key_0123456789abcdefghij"  # made by tests/data/make_release_log


async def test_the_0_1_0_log_opens_with_every_run(
    aiohttp_client: Any, make_app: Callable[..., web.Application], db_path: str
) -> None:
    shutil.copyfile(RELEASE_LOG, db_path)
    with sqlite3.connect(RELEASE_LOG) as conn:  # what the file holds, read without runlog
        expected = dict(conn.execute("SELECT run_id, status FROM runs").fetchall())
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert sorted(expected.values()) == [
        "cancelled",
        "completed",
        "completed",
        "failed",
        "waiting_for_input",
    ]
    api = Api(await aiohttp_client(make_app(secret_key="fixture")), RELEASE_KEY)
    _, ready = await api.request("GET", "/readyz", expect=200)
    assert ready["head"] >= events
    _, runs = await api.request("GET", "/v1/runs?limit=50", expect=200)
    assert {r["run_id"]: r["status"] for r in runs} == expected
    for run_id in expected:
        _, frames = await api.request("GET", f"/v1/runs/{run_id}/events?follow=0", expect=200)
        assert '"type":"run.started"' in frames
    # The usage report, a read model the release did not have, is built from its log.
    _, usage = await api.request("GET", "/v1/usage?from=2000-01-01&to=2999-12-31", expect=200)
    assert sum(row["runs"] for row in usage["rows"]) == len(expected)
    assert sum(row["output_tokens"] for row in usage["rows"]) == sum(
        r["total_output_tokens"] for r in runs
    )
    # The run that was waiting still takes its answer in this version.
    waiting = next(r for r, s in expected.items() if s == "waiting_for_input")
    await api.request("POST", f"/v1/runs/{waiting}/input", json={"content": "blue"}, expect=200)
    assert (await api.wait_for(waiting))["status"] == "completed"
    report = await api.runtime.store.verify()
    assert report.ok and report.events > events
    # Its runs table predates estimated usage and retries: it was replayed into the new shape.
    for run_id in expected:
        _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
        assert (run["usage_estimated"], run["retry_of"]) == (False, None)
    # A run cancelled before receipts were recorded still answers one, from its tool events.
    cancelled = next(r for r, s in expected.items() if s == "cancelled")
    _, receipt = await api.request("POST", f"/v1/runs/{cancelled}/cancel", expect=200)
    assert receipt["status"] == "cancelled"
    assert set(receipt["tool_calls"]) == {"completed", "interrupted", "not_started"}
    # And the tables equal a rebuild from the log.
    source = connect_database(db_path)
    scratch = connect_database(str(Path(db_path).parent / "scratch.db"))
    try:
        rebuild(source, scratch, all_projections())
        for table in (t for p in all_projections() for t in p.tables):
            assert table_rows(source, table) == table_rows(scratch, table), table
    finally:
        source.close()
        scratch.close()
