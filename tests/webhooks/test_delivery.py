"""Deliveries through the real app to a real receiver on 127.0.0.1: bodies, signatures,
retries, ordering, 410, and what the log records."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from eventstore import RecordedEvent
from eventstore.sql import SqliteDatabase
from projections import all_projections, diff_tables, rebuild
from tests.conftest import Api
from tests.webhooks.conftest import deliveries, deliveries_when, register, settled
from tests.webhooks.receiver import Receiver, readme_verifier

verify = readme_verifier()
BODY_KEYS = ["id", "type", "run_id", "thread_id", "org_id", "seq", "created_at", "data"]


def _log(db: str, stream_prefix: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT stream, seq, type, data FROM events WHERE stream LIKE ? ORDER BY position",
            (stream_prefix + "%",),
        ).fetchall()
    finally:
        conn.close()


async def test_every_event_type_is_delivered_signed_in_order(
    api: Api, receiver: Receiver, db_path: str
) -> None:
    endpoint = await register(api, receiver.url, description="all outcomes")
    assert endpoint["events"] == [
        "run.completed",
        "run.failed",
        "run.cancelled",
        "run.waiting_for_input",
    ]
    secret = endpoint["secret"]
    assert secret.startswith("whsec_")

    thread_ok, completed = await api.start_run("hello")
    await api.wait_for(completed)
    _, failed = await api.start_run("/fail")
    await api.wait_for(failed)
    _, asked = await api.start_run("/ask what colour?")
    await api.wait_for(asked, {"waiting_for_input"})
    await api.request("POST", f"/v1/runs/{asked}:cancel", expect=200)

    got = [await receiver.next() for _ in range(4)]
    by_run: dict[str, list[dict[str, Any]]] = {}
    for received in got:
        body = json.loads(received.body)
        assert list(body) == BODY_KEYS
        assert received.headers["Runlog-Delivery"] == body["id"]
        assert received.headers["Content-Type"] == "application/json"
        assert verify(secret, received.body, received.headers["Runlog-Signature"])
        by_run.setdefault(body["run_id"], []).append(body)
    assert [b["type"] for b in by_run[completed]] == ["run.completed"]
    assert [b["type"] for b in by_run[failed]] == ["run.failed"]
    assert [b["type"] for b in by_run[asked]] == ["run.waiting_for_input", "run.cancelled"]
    assert by_run[completed][0]["thread_id"] == thread_ok

    # The body carries the event exactly as the log (and SSE) has it.
    events = {(s, q): (t, d) for s, q, t, d in _log(db_path, "run-")}
    for run_id, bodies in by_run.items():
        for body in bodies:
            kind, data = events[(f"run-{run_id}", body["seq"])]
            assert body["type"] == kind
            assert body["data"] == json.loads(data)
    assert by_run[failed][0]["data"]["error_class"] == "provider.error"

    # A tampered body, or another endpoint's secret, does not verify.
    first = got[0]
    signature = first.headers["Runlog-Signature"]
    assert not verify(secret, first.body.replace(b'"run.', b'"xun.', 1), signature)
    assert not verify(secret, first.body + b" ", signature)
    other = await register(api, receiver.url)
    assert not verify(other["secret"], first.body, signature)

    rows = await settled(api, endpoint["id"], 4)
    assert {r["status"] for r in rows} == {"succeeded"}
    assert all(r["attempts"] == 1 and r["last_response_code"] == 200 for r in rows)
    assert all(r["next_attempt_at"] is None for r in rows)


async def test_two_failures_then_success_is_three_attempts_under_one_id(
    api: Api, receiver: Receiver, db_path: str
) -> None:
    receiver.answers = [500, 500]
    endpoint = await register(api, receiver.url, events=["run.completed"])
    _, run_id = await api.start_run("hello")
    got = [await receiver.next() for _ in range(3)]
    assert [r.status for r in got] == [500, 500, 200]
    ids = {r.headers["Runlog-Delivery"] for r in got}
    assert len(ids) == 1
    assert len({r.body for r in got}) == 1  # the same bytes each time; only t is new

    (row,) = await settled(api, endpoint["id"], 1)
    assert row["id"] in ids
    assert row["run_id"] == run_id
    assert row["type"] == "run.completed"
    assert row["status"] == "succeeded"
    assert row["attempts"] == 3
    assert row["last_response_code"] == 200
    assert row["last_error"] is None

    stream = _log(db_path, f"delivery-{row['id']}")
    assert [t for _, _, t, _ in stream] == [
        "webhook.delivery_claimed",
        "webhook.delivery_attempt_failed",
        "webhook.delivery_claimed",
        "webhook.delivery_attempt_failed",
        "webhook.delivery_claimed",
        "webhook.delivery_succeeded",
    ]
    datas = [json.loads(d) for _, _, _, d in stream]
    assert [d["attempt"] for d in datas] == [1, 1, 2, 2, 3, 3]
    assert datas[1]["status_code"] == 500
    assert datas[1]["retry_at"] is not None
    assert datas[1]["gave_up"] is False
    assert datas[5]["status_code"] == 200
    # The secret is nowhere in the log's files (the WAL included), nor in any event.
    files = [Path(db_path), Path(f"{db_path}-wal")]
    raw = b"".join(f.read_bytes() for f in files if f.exists())
    assert b"run.completed" in raw  # the files do hold the events, as plain text
    assert endpoint["secret"].encode() not in raw
    assert endpoint["secret"][len("whsec_") :].encode() not in raw


async def test_a_runs_next_event_waits_for_the_previous_delivery(
    api: Api, receiver: Receiver
) -> None:
    receiver.answers = [503]
    await register(api, receiver.url)
    _, run_id = await api.start_run("/ask which one?")
    await api.wait_for(run_id, {"waiting_for_input"})
    first = await receiver.next()
    assert first.status == 503
    await api.request("POST", f"/v1/runs/{run_id}/input", json={"content": "this"}, expect=200)
    await api.wait_for(run_id)
    second, third = await receiver.next(), await receiver.next()
    types = [json.loads(r.body)["type"] for r in (first, second, third)]
    assert types == ["run.waiting_for_input", "run.waiting_for_input", "run.completed"]


async def test_410_disables_the_endpoint_and_cancels_what_was_pending(
    api: Api, receiver: Receiver
) -> None:
    receiver.answers = [410]
    endpoint = await register(api, receiver.url)
    _, run_id = await api.start_run("/ask which one?")
    gone = await receiver.next()
    assert gone.status == 410
    (row,) = await settled(api, endpoint["id"], 1)
    assert row["status"] == "failed"
    assert row["last_response_code"] == 410
    _, shown = await api.request("GET", f"/v1/webhook-endpoints/{endpoint['id']}", expect=200)
    assert shown["status"] == "disabled"
    assert "410" in shown["disabled_reason"]
    # Nothing more is sent: the run's completion makes no delivery.
    await api.request("POST", f"/v1/runs/{run_id}/input", json={"content": "x"}, expect=200)
    await api.wait_for(run_id)
    assert len(await deliveries(api, endpoint["id"])) == 1
    assert len(receiver.received) == 1


async def test_a_delivery_gives_up_after_the_retry_window(
    aiohttp_client: Any, make_app: Any, receiver: Receiver
) -> None:
    from tests.conftest import ADMIN_KEY
    from tests.webhooks.conftest import FAST

    api = Api(
        await aiohttp_client(make_app(**{**FAST, "webhooks_retry_for_seconds": 0.2})), ADMIN_KEY
    )
    receiver.answers = [500] * 100
    endpoint = await register(api, receiver.url, events=["run.completed"])
    await api.start_run("hello")
    (row,) = await settled(api, endpoint["id"], 1)
    assert row["status"] == "failed"
    assert row["last_response_code"] == 500
    assert row["next_attempt_at"] is None
    assert 1 <= row["attempts"] == len(receiver.received) < 10


async def test_unreachable_receiver_is_recorded_with_the_error_and_next_attempt(
    api: Api, receiver: Receiver
) -> None:
    await receiver.stop()  # nothing listens on its port any more
    endpoint = await register(api, receiver.url, events=["run.completed"])
    await api.start_run("hello")
    (row,) = await deliveries_when(
        api,
        endpoint["id"],
        lambda rows: bool(rows and rows[0]["attempts"] >= 2 and rows[0]["last_error"]),
    )
    assert row["status"] == "pending"
    assert row["last_response_code"] is None
    assert "Connect" in row["last_error"] or "connect" in row["last_error"]
    assert row["next_attempt_at"] is not None


async def test_deliveries_rebuild_identically_from_the_log(
    api: Api, receiver: Receiver, db_path: str, tmp_path: Any
) -> None:
    receiver.answers = [500]
    endpoint = await register(api, receiver.url)
    await api.start_run("hello")
    await receiver.next()
    await receiver.next()
    await settled(api, endpoint["id"], 1)
    await api.request("DELETE", f"/v1/webhook-endpoints/{endpoint['id']}", expect=200)
    live = SqliteDatabase(sqlite3.connect(db_path, isolation_level=None))
    scratch = SqliteDatabase(sqlite3.connect(tmp_path / "scratch.db", isolation_level=None))
    try:
        rebuild(live, scratch, all_projections())
        assert diff_tables(live, scratch, all_projections()) == {}
        assert live.fetch_one("SELECT count(*) FROM webhook_deliveries") == (1,)
    finally:
        live.close()
        scratch.close()


async def test_a_private_target_is_not_sent_to_when_private_targets_are_not_allowed(
    aiohttp_client: Any, make_app: Any, receiver: Receiver
) -> None:
    """An endpoint recorded while private targets were allowed (or a name that resolves
    elsewhere later) is checked again on every delivery."""
    from runs.events import WebhookEndpointCreated, encode_event, webhook_stream
    from runs.ids import new_id
    from tests.conftest import ADMIN_KEY

    api = Api(await aiohttp_client(make_app(webhooks_retry_base_seconds=0.05)), ADMIN_KEY)
    org_id = (await api.runtime.queries.api_key_by_hash(_sha(ADMIN_KEY)))["org_id"]
    endpoint_id = new_id()
    created = WebhookEndpointCreated(
        endpoint_id=endpoint_id,
        org_id=org_id,
        url=receiver.url,
        events=["run.completed"],
        created_by_user_id="admin",
    )
    await api.runtime.store.append(webhook_stream(endpoint_id), [encode_event(created)], 0)
    await api.start_run("hello")
    rows = await deliveries_when(
        api, endpoint_id, lambda rows: bool(rows and rows[0]["last_error"])
    )
    assert rows[0]["last_error"] is not None
    assert "private" in rows[0]["last_error"]
    assert rows[0]["last_response_code"] is None
    assert receiver.received == []


def _sha(key: str) -> str:
    from runs.auth import key_sha256

    return key_sha256(key)


async def test_a_receiver_that_does_not_answer_slows_no_run(api: Api, receiver: Receiver) -> None:
    receiver.answers = [0] * 3  # each request is held open until released
    endpoint = await register(api, receiver.url, events=["run.completed"])
    runs = [(await api.start_run(f"run {i}"))[1] for i in range(3)]
    for run_id in runs:
        assert (await api.wait_for(run_id, timeout=5))["status"] == "completed"
    # Their deliveries are in flight meanwhile, and new work is taken as usual.
    for _ in runs:
        assert (await receiver.next()).status == 0
    _, more = await api.start_run("one more")
    assert (await api.wait_for(more, timeout=5))["status"] == "completed"
    receiver.release()
    rows = await settled(api, endpoint["id"], 4)
    assert [r["status"] for r in rows] == ["succeeded"] * 4


async def test_with_no_endpoint_finished_runs_do_not_make_the_worker_scan(
    api: Api, receiver: Receiver, monkeypatch: Any
) -> None:
    """While no endpoint exists no run event can have made a delivery: runs end without a scan
    of the deliveries. Once an endpoint is created, the next run's delivery goes out at once."""
    worker = api.runtime.deliveries
    assert worker is not None
    scans: list[int] = []
    pending = worker.queries.pending

    async def counted(limit: int) -> list[dict[str, Any]]:
        scans.append(limit)
        return await pending(limit)

    monkeypatch.setattr(worker.queries, "pending", counted)
    _, first = await api.start_run("hello")
    await api.wait_for(first)
    async with asyncio.timeout(5):
        while worker._endpoints is not False:  # the scan that found nothing, and no endpoint
            await asyncio.sleep(0.01)
    before = len(scans)
    for _ in range(3):
        _, run_id = await api.start_run("hello")
        await api.wait_for(run_id)
    assert len(scans) == before

    await register(api, receiver.url)
    _, last = await api.start_run("hello")
    await api.wait_for(last)
    body = json.loads((await receiver.next(timeout=5)).body)
    assert (body["run_id"], body["type"]) == (last, "run.completed")
    assert len(scans) > before


async def test_an_endpoint_event_counts_even_when_the_worker_is_already_woken(api: Api) -> None:
    """The worker is woken already (a scan is due) when an endpoint is created: that scan must
    not go on taking the service for one without endpoints."""
    worker = api.runtime.deliveries
    assert worker is not None
    _, first = await api.start_run("hello")
    await api.wait_for(first)
    async with asyncio.timeout(5):
        while worker._endpoints is not False:
            await asyncio.sleep(0.01)
    worker._wake.set()
    created = RecordedEvent(
        1, "webhook-x", 1, "webhook.endpoint_created", "{}", "2026-01-01T00:00:00.000Z", "0" * 64
    )
    worker._on_commit([created])
    assert worker._endpoints is True
