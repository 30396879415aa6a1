"""Every read model rebuilt from the log equals the live one, row for row, on both backends.

The log is built through the HTTP API, so the live tables are exactly what the service wrote.
The scratch database is SQLite on either backend (as in ``runlog rebuild --check``), so on
PostgreSQL this also shows that one projection definition gives the same rows on both engines.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from eventstore import SQLiteEventStore, connect_database
from eventstore.sql import SqliteDatabase
from projections import all_projections, rebuild, table_rows
from runs.auth import key_sha256
from runs.events import (
    RunStarted,
    RunUsage,
    UserDeleted,
    WebhookEndpointCreated,
    delivery_stream,
    encode_event,
    org_stream,
    run_stream,
    webhook_stream,
)
from runs.ids import new_id
from runs.webhooks import delivery_id_for
from tests.conftest import ADMIN_KEY, Api


async def build_varied_log(api: Api) -> None:
    accounts = api.runtime.accounts
    admin = await api.runtime.queries.api_key_by_hash(key_sha256(ADMIN_KEY))
    assert admin is not None
    org_id = admin["org_id"]

    # Users and keys: one with a password, a revoked key, a deleted user.
    bob = await accounts.create_user(org_id, "bob", "bob@example.com", "pw")
    bob_key_id, bob_key = await accounts.create_key(bob)
    _, spare_key = await accounts.create_key(bob)
    await accounts.revoke_key(bob_key_id)
    gone = await accounts.create_user(org_id, "gone", "gone@example.com")
    await api.runtime.store.append(org_stream(org_id), [encode_event(UserDeleted(user_id=gone))])

    # Threads with messages and runs that end every way.
    thread_id, done = await api.start_run("hello there\n/cache 2")
    await api.wait_for(done)
    await api.add_message(thread_id, "and a second question")
    second = await api.create_run(thread_id)
    await api.wait_for(second)
    _, failed = await api.start_run("/fail")
    await api.wait_for(failed)
    _, cancelled = await api.start_run("/slow 200\nnever finished")
    await api.request("POST", f"/v1/runs/{cancelled}:cancel", expect=200)
    # A model call cut mid-stream (its usage estimated), and the failed run retried.
    _, cut = await api.start_run("/slow 30\na reply cut in the middle")
    events = api.runtime.store.subscribe(run_stream(cut), 0)
    async for event in events:
        if event.type == "message.delta":
            break
    await events.aclose()
    await api.request("POST", f"/v1/runs/{cut}/cancel", expect=200)
    assert (await api.wait_for(cut))["usage_estimated"] is True
    _, retried = await api.request("POST", f"/v1/runs/{failed}/retry", expect=201)
    assert (await api.wait_for(retried["run_id"]))["retry_of"] == failed
    _, answered = await api.start_run("/ask favourite colour?")
    await api.wait_for(answered, {"waiting_for_input"})
    await api.request("POST", f"/v1/runs/{answered}/input", json={"content": "blue"}, expect=200)
    await api.wait_for(answered)
    _, waiting = await api.start_run("/ask still there?")
    await api.wait_for(waiting, {"waiting_for_input"})
    await api.create_thread(None)
    await api.create_thread("bob's", key=spare_key)

    # A webhook endpoint (recorded directly: this app refuses loopback targets, on creation and
    # on delivery), a delivery whose attempt failed, then the endpoint deleted (cancelling it).
    endpoint_id = new_id()
    hook = WebhookEndpointCreated(
        endpoint_id=endpoint_id,
        org_id=org_id,
        url="http://127.0.0.1:9/hook",
        events=["run.completed"],
        created_by_user_id=bob,
    )
    await api.runtime.store.append(webhook_stream(endpoint_id), [encode_event(hook)], 0)
    _, hooked = await api.start_run("tell the webhook")
    await api.wait_for(hooked)
    (completed,) = [
        e
        for e in await api.runtime.store.read_stream(run_stream(hooked))
        if e.type == "run.completed"
    ]
    delivery = delivery_id_for(endpoint_id, completed.position, completed.created_at)
    attempts = api.runtime.store.subscribe(delivery_stream(delivery), 0)
    async for event in attempts:
        if event.type == "webhook.delivery_attempt_failed":
            break
    await attempts.aclose()
    await api.runtime.webhooks.delete(org_id, bob, endpoint_id)

    # A second org with its own thread and run.
    other = await api.new_org_key("second")
    other_thread = await api.create_thread("other org", key=other)
    await api.add_message(other_thread, "from the other org", key=other)
    other_run = await api.create_run(other_thread, key=other)
    await api.wait_for(other_run, key=other)
    assert bob_key


def scratch_db(tmp_path: Path) -> SqliteDatabase:
    return SqliteDatabase(sqlite3.connect(tmp_path / "scratch.db", isolation_level=None))


async def test_rebuilt_projections_equal_the_live_ones(api_on_both: Api, tmp_path: Path) -> None:
    api = api_on_both
    await build_varied_log(api)
    source = connect_database(api.runtime.config.db)
    scratch = scratch_db(tmp_path)
    try:
        head = source.fetch_one("SELECT max(position) FROM events")
        replayed = rebuild(source, scratch, all_projections())
        assert head is not None
        assert replayed == head[0]

        statuses = {r[0] for r in source.fetch_all("SELECT status FROM runs")}
        assert statuses == {"completed", "failed", "cancelled", "waiting_for_input"}
        assert source.fetch_one("SELECT count(*) FROM orgs") == (2,)
        assert source.fetch_one("SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL") == (
            1,
        )
        assert source.fetch_one("SELECT count(*) FROM users WHERE deleted_at IS NOT NULL") == (1,)
        assert source.fetch_one("SELECT count(*) FROM runs WHERE cache_hit_rate > 0") == (1,)

        tables = [t for p in all_projections() for t in p.tables]
        assert set(tables) >= {"orgs", "users", "api_keys", "personas", "threads", "messages"}
        assert "runs" in tables
        for table in tables:
            live = table_rows(source, table)
            rebuilt = table_rows(scratch, table)
            assert live, f"{table} is empty: the log is not varied enough"
            assert rebuilt == live, table
            assert scratch.table_columns(table) == source.table_columns(table), table
    finally:
        source.close()
        scratch.close()


async def test_the_comparison_sees_a_difference(api_on_both: Api, tmp_path: Path) -> None:
    """The row-for-row check can fail: a run changed only in the rebuilt copy is noticed."""
    api = api_on_both
    _, run_id = await api.start_run("x")
    await api.wait_for(run_id)
    source = connect_database(api.runtime.config.db)
    scratch = scratch_db(tmp_path)
    try:
        rebuild(source, scratch, all_projections())
        assert table_rows(scratch, "runs") == table_rows(source, "runs")
        scratch.execute("UPDATE runs SET total_output_tokens = total_output_tokens + 1")
        assert table_rows(scratch, "runs") != table_rows(source, "runs")
    finally:
        source.close()
        scratch.close()


async def test_a_runs_table_of_an_older_version_is_rebuilt_on_start(tmp_path: Path) -> None:
    """A database written before estimated usage and retries (no ``usage_estimated`` or
    ``retry_of`` column, no per-call usage table) gets the new shape, replayed from its log."""
    db = str(tmp_path / "older.db")
    run_id = "01a222e0-5694-70d2-9042-2dade0db901d"
    started = RunStarted(
        run_id=run_id,
        thread_id="01a222e0-5694-70d2-9042-2dade0db9000",
        org_id="01a222e0-5694-70d2-9042-2dade0db9001",
        created_by_user_id="01a222e0-5694-70d2-9042-2dade0db9002",
        trace_id="trace-older-0001",
        route_id="scripted",
        provider="scripted",
        model="scripted-1",
        retry_of="01a222e0-5694-70d2-9042-2dade0db9003",
    )
    usages = [
        RunUsage(model="scripted-1", input_tokens=10, output_tokens=3, cost_usd=0.5, call=1),
        RunUsage(model="scripted-1", input_tokens=7, output_tokens=2, call=2, estimated=True),
    ]
    store = await SQLiteEventStore.open(db, all_projections())
    await store.append(run_stream(run_id), [encode_event(e) for e in [started, *usages]], 0)
    await store.close()
    conn = connect_database(db)
    try:
        expected = {t: table_rows(conn, t) for t in ("runs", "run_call_usage")}
        # What the older version had: none of the new columns, no per-call table.
        conn.execute("ALTER TABLE runs DROP COLUMN usage_estimated")
        conn.execute("ALTER TABLE runs DROP COLUMN retry_of")
        conn.execute("DROP TABLE run_call_usage")
    finally:
        conn.close()

    store = await SQLiteEventStore.open(db, all_projections())
    await store.close()
    conn = connect_database(db)
    scratch = scratch_db(tmp_path)
    try:
        rebuild(conn, scratch, all_projections())
        for table, rows in expected.items():
            assert table_rows(conn, table) == rows == table_rows(scratch, table), table
        row = conn.fetch_one(
            "SELECT total_input_tokens, usage_estimated, retry_of FROM runs WHERE run_id = ?",
            (run_id,),
        )
        assert row == (17, 1, started.retry_of)
    finally:
        conn.close()
        scratch.close()
