"""Two workers on one log (as two processes would be): each attempt is claimed by one of them,
so a receiver gets each delivery once when nothing fails."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from pathlib import Path

from eventstore import open_store
from projections import all_projections
from runs.events import (
    RunCompleted,
    RunStarted,
    WebhookEndpointCreated,
    encode_event,
    run_stream,
    webhook_stream,
)
from runs.ids import new_id
from runs.webhooks.worker import DeliveryWorker
from tests.webhooks.receiver import Receiver

RUNS = 20


async def test_competing_workers_claim_each_attempt_once(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    db = str(tmp_path / "claims.db")
    async with open_store(db, all_projections()) as store:
        endpoint_id, org_id = new_id(), new_id()
        created = WebhookEndpointCreated(
            endpoint_id=endpoint_id,
            org_id=org_id,
            url=receiver.url,
            events=["run.completed"],
            created_by_user_id="u",
        )
        await store.append(webhook_stream(endpoint_id), [encode_event(created)], 0)
        workers = [DeliveryWorker(store, b"key", allow_private=True) for _ in range(2)]
        for worker in workers:
            worker.start()
        try:
            run_ids = [new_id() for _ in range(RUNS)]
            for run_id in run_ids:
                started = RunStarted(
                    run_id=run_id,
                    thread_id=new_id(),
                    org_id=org_id,
                    created_by_user_id="u",
                    trace_id="t",
                    route_id="scripted",
                    provider="scripted",
                    model="m",
                )
                await store.append(run_stream(run_id), [encode_event(started)], 0)
            # Completed together, so both workers wake on the same commits and race.
            await asyncio.gather(
                *(store.append(run_stream(r), [encode_event(RunCompleted())], 1) for r in run_ids)
            )
            got = [await receiver.next() for _ in range(RUNS)]
        finally:
            for worker in workers:
                await worker.stop(5)
            await receiver.stop()
    assert sorted(json.loads(r.body)["run_id"] for r in got) == sorted(run_ids)
    assert len(receiver.received) == RUNS  # none twice
    conn = sqlite3.connect(db)
    try:
        claims = conn.execute(
            "SELECT stream, count(*) FROM events WHERE type = 'webhook.delivery_claimed'"
            " GROUP BY stream"
        ).fetchall()
    finally:
        conn.close()
    assert Counter(count for _, count in claims) == {1: RUNS}
