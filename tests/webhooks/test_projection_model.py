"""The deliveries table against a plain model of what it should say, for random sequences of
the events the service can append (hypothesis)."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eventstore import RecordedEvent
from eventstore.sql import SqliteDatabase
from projections import RunsProjection, WebhooksProjection
from runs.events import (
    DomainEvent,
    RunCompleted,
    RunStarted,
    RunWaitingForInput,
    WebhookDeliveryAttemptFailed,
    WebhookDeliveryClaimed,
    WebhookDeliverySucceeded,
    WebhookEndpointCreated,
    WebhookEndpointDeleted,
    WebhookEndpointDisabled,
    encode_event,
)
from runs.webhooks import delivery_id_for

ORGS = ("org-a", "org-b")
STEPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["endpoint", "run", "wait", "complete", "claim", "succeed", "fail", "give_up", "end"]
        ),
        st.integers(0, 5),
    ),
    max_size=40,
)


class World:
    """Appends synthetic events through the two projections, and keeps the model."""

    def __init__(self, conn: SqliteDatabase) -> None:
        self.conn = conn
        self.position = 0
        self.seqs: dict[str, int] = {}
        self.projections = (RunsProjection(), WebhooksProjection())
        for projection in self.projections:
            projection.create(conn)
        # The model: endpoints (org, events, active), runs (org, live), deliveries.
        self.endpoints: dict[str, tuple[str, tuple[str, ...], bool]] = {}
        self.runs: dict[str, tuple[str, bool]] = {}
        self.deliveries: dict[str, dict[str, Any]] = {}

    def append(self, stream: str, event: DomainEvent) -> RecordedEvent:
        self.position += 1
        seq = self.seqs[stream] = self.seqs.get(stream, 0) + 1
        encoded = encode_event(event)
        created_at = f"2024-01-01T00:{self.position // 60:02d}:{self.position % 60:02d}.000Z"
        recorded = RecordedEvent(
            self.position, stream, seq, encoded.type, encoded.data.decode(), created_at, "h"
        )
        for projection in self.projections:
            projection.apply(self.conn, recorded)
        return recorded

    def step(self, kind: str, pick: int) -> None:
        if kind == "endpoint":
            endpoint_id = f"ep{len(self.endpoints)}"
            events = (("run.completed",), ("run.waiting_for_input", "run.completed"))[pick % 2]
            org = ORGS[pick % len(ORGS)]
            created = WebhookEndpointCreated(
                endpoint_id=endpoint_id,
                org_id=org,
                url="https://example.com/",
                events=list(events),
                created_by_user_id="u",
            )
            self.append(f"webhook-{endpoint_id}", created)
            self.endpoints[endpoint_id] = (org, events, True)
        elif kind == "run":
            run_id = f"run{len(self.runs)}"
            org = ORGS[pick % len(ORGS)]
            started = RunStarted(
                run_id=run_id,
                thread_id="t",
                org_id=org,
                created_by_user_id="u",
                trace_id="x",
                route_id="r",
                provider="scripted",
                model="m",
            )
            self.append(f"run-{run_id}", started)
            self.runs[run_id] = (org, True)
        elif kind in ("wait", "complete"):
            live = [r for r, (_, alive) in self.runs.items() if alive]
            if not live:
                return
            run_id = live[pick % len(live)]
            event: DomainEvent = (
                RunCompleted()
                if kind == "complete"
                else RunWaitingForInput(request_id="q", kind="question", prompt="?")
            )
            recorded = self.append(f"run-{run_id}", event)
            org = self.runs[run_id][0]
            if kind == "complete":
                self.runs[run_id] = (org, False)
            for endpoint_id, (endpoint_org, events, active) in self.endpoints.items():
                if active and endpoint_org == org and recorded.type in events:
                    delivery_id = delivery_id_for(
                        endpoint_id, recorded.position, recorded.created_at
                    )
                    self.deliveries[delivery_id] = {
                        "endpoint": endpoint_id,
                        "status": "pending",
                        "attempts": 0,
                        "claimed": False,
                    }
        elif kind == "claim":
            pending = [d for d, v in self.deliveries.items() if v["status"] == "pending"]
            if not pending:
                return
            delivery_id = pending[pick % len(pending)]
            model = self.deliveries[delivery_id]
            model["attempts"] += 1
            model["claimed"] = True
            claim = WebhookDeliveryClaimed(
                delivery_id=delivery_id,
                endpoint_id=model["endpoint"],
                attempt=model["attempts"],
                worker="w",
                claimed_until="2024-01-02T00:00:00.000Z",
            )
            self.append(f"delivery-{delivery_id}", claim)
        elif kind in ("succeed", "fail", "give_up"):
            # An outcome follows a claim, even if the endpoint went away meanwhile.
            claimed = [d for d, v in self.deliveries.items() if v["claimed"]]
            if not claimed:
                return
            delivery_id = claimed[pick % len(claimed)]
            model = self.deliveries[delivery_id]
            model["claimed"] = False
            common = {
                "delivery_id": delivery_id,
                "attempt": model["attempts"],
                "signed_at": 1,
                "duration_ms": 1,
                "body_sha256": "0" * 64,
            }
            outcome: DomainEvent
            if kind == "succeed":
                outcome = WebhookDeliverySucceeded(status_code=200, **common)
                model["status"] = "succeeded"
            else:
                gave_up = kind == "give_up"
                outcome = WebhookDeliveryAttemptFailed(
                    status_code=500,
                    retry_at=None if gave_up else "2024-01-03T00:00:00.000Z",
                    gave_up=gave_up,
                    **common,
                )
                if model["status"] == "pending" and gave_up:
                    model["status"] = "failed"
            self.append(f"delivery-{delivery_id}", outcome)
        elif kind == "end":
            active = [e for e, (_, _, on) in self.endpoints.items() if on]
            if not active:
                return
            endpoint_id = active[pick % len(active)]
            ended: DomainEvent = (
                WebhookEndpointDeleted(endpoint_id=endpoint_id)
                if pick % 2
                else WebhookEndpointDisabled(endpoint_id=endpoint_id, reason="410")
            )
            self.append(f"webhook-{endpoint_id}", ended)
            org, events, _ = self.endpoints[endpoint_id]
            self.endpoints[endpoint_id] = (org, events, False)
            for model in self.deliveries.values():
                if model["endpoint"] == endpoint_id and model["status"] == "pending":
                    model["status"] = "cancelled"


SETUP = [("endpoint", 1), ("run", 1), ("wait", 0), ("complete", 0)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
# The paths where order matters, always tried: an attempt whose endpoint went away while it
# was in flight (its outcome must not revive the delivery), and retries before a give-up.
@example(steps=[*SETUP, ("claim", 0), ("end", 0), ("fail", 0)])
@example(steps=[*SETUP, ("claim", 0), ("end", 1), ("succeed", 0)])
@example(steps=[*SETUP, ("claim", 1), ("end", 0), ("give_up", 0), ("claim", 0)])
@example(steps=[*SETUP, ("claim", 0), ("fail", 0), ("claim", 0), ("give_up", 0), ("claim", 0)])
def test_the_deliveries_table_says_what_the_model_says(steps: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        raw = sqlite3.connect(Path(folder) / "model.db", isolation_level=None)
        raw.execute("PRAGMA journal_mode = WAL")
        raw.execute("PRAGMA synchronous = OFF")
        conn = SqliteDatabase(raw)
        try:
            world = World(conn)
            for kind, pick in steps:
                world.step(kind, pick)
            rows = conn.fetch_all(
                "SELECT delivery_id, status, attempts, next_attempt_at, version"
                " FROM webhook_deliveries"
            )
        finally:
            conn.close()
    assert {r[0]: (r[1], r[2]) for r in rows} == {
        d: (v["status"], v["attempts"]) for d, v in world.deliveries.items()
    }
    for delivery_id, status, _, next_attempt_at, version in rows:
        # Due only while pending; the row knows its stream's seq (the next claim's guard).
        assert (next_attempt_at is not None) == (status == "pending")
        assert version == world.seqs.get(f"delivery-{delivery_id}", 0)
