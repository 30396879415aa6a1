"""Every query the API issues over the read models uses an index: none reads a whole large
table, so list and detail latency stay flat as the log grows.

The queries are collected, not listed by hand: the store's ``fetch_all``/``fetch_one`` (the one
door every REST read, the metrics scrape and the webhook worker go through) record each SQL text
with its parameters while the API serves a varied log and every read route, and every public
method of ``Queries`` and ``WebhookQueries`` must have run. Each recorded query is then planned
by the engine: ``EXPLAIN QUERY PLAN`` on SQLite, ``EXPLAIN (FORMAT JSON)`` on PostgreSQL with
sequential scans switched off (so the plan shows whether an index *can* serve the query, not
what is cheapest over a handful of test rows).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from eventstore import Database, connect_database, open_event_store
from projections import all_projections
from projections.queries import Queries
from projections.runs import live_runs_below
from projections.webhook_queries import WebhookQueries
from runs.auth import key_sha256
from tests.conftest import ADMIN_KEY, Api
from tests.http.test_projections_rebuild import build_varied_log

#: Tables that grow with the log: never read whole. (Accounts, personas, webhook endpoints and
#: the checkpoints are a handful of rows per org.)
LARGE_TABLES = frozenset(
    {
        "events",
        "runs",
        "run_call_usage",
        "threads",
        "messages",
        "usage",
        "usage_live_runs",
        "usage_calls",
        "webhook_deliveries",
    }
)


def sqlite_full_scans(db: Database, sql: str, params: tuple[Any, ...]) -> list[str]:
    # Rows are (id, parent, notused, detail): "SCAN runs" or "SCAN runs USING INDEX ..." read
    # a whole table or index; "SEARCH runs USING INDEX ... (org_id=?)" does not.
    plan = db.fetch_all(f"EXPLAIN QUERY PLAN {sql}", params)
    scans = []
    for *_, detail in plan:
        words = str(detail).split()
        if words[:1] == ["SCAN"] and len(words) > 1 and words[1] in LARGE_TABLES:
            scans.append(str(detail))
    return scans


def _nodes(
    node: dict[str, Any], under_limit: bool = False
) -> Iterator[tuple[dict[str, Any], bool]]:
    yield node, under_limit
    limit = under_limit or node.get("Node Type") == "Limit"
    for child in node.get("Plans", ()):
        yield from _nodes(child, limit)


def postgres_full_scans(db: Database, sql: str, params: tuple[Any, ...]) -> list[str]:
    [(plan,)] = db.fetch_all(f"EXPLAIN (FORMAT JSON) {sql}", params)
    scans = []
    for node, under_limit in _nodes(plan[0]["Plan"]):
        table = node.get("Relation Name")
        if table not in LARGE_TABLES:
            continue
        kind = node["Node Type"]
        if kind == "Seq Scan":
            scans.append(f"{kind} on {table}")
        # An index read without a condition is a whole index, unless a Limit stops it at its
        # first rows (max(position) reads the last entry of the primary key).
        elif "Index" in kind and "Index Cond" not in node and not under_limit:
            scans.append(f"{kind} on {table} without a condition")
    return scans


def record_calls(monkeypatch: pytest.MonkeyPatch, called: set[str]) -> None:
    for cls in (Queries, WebhookQueries):
        for name, method in list(vars(cls).items()):
            if name.startswith("_") or not inspect.iscoroutinefunction(method):
                continue

            def wrap(
                method: Callable[..., Any], qualified: str = f"{cls.__name__}.{name}"
            ) -> Callable[..., Any]:
                @functools.wraps(method)
                async def recorded(*args: Any, **kwargs: Any) -> Any:
                    called.add(qualified)
                    return await method(*args, **kwargs)

                return recorded

            monkeypatch.setattr(cls, name, wrap(method))


def public_methods() -> set[str]:
    return {
        f"{cls.__name__}.{name}"
        for cls in (Queries, WebhookQueries)
        for name, method in vars(cls).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(method)
    }


async def test_every_query_the_api_issues_uses_an_index(
    api_on_both: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = api_on_both
    store = api.runtime.store
    issued: dict[str, tuple[Any, ...]] = {}
    called: set[str] = set()
    record_calls(monkeypatch, called)
    fetch_all, fetch_one = store.fetch_all, store.fetch_one

    async def recording_all(sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        issued.setdefault(sql, tuple(params))
        return await fetch_all(sql, params)

    async def recording_one(sql: str, params: Any = ()) -> tuple[Any, ...] | None:
        issued.setdefault(sql, tuple(params))
        return await fetch_one(sql, params)

    monkeypatch.setattr(store, "fetch_all", recording_all)
    monkeypatch.setattr(store, "fetch_one", recording_one)

    await build_varied_log(api)
    _, runs = await api.request("GET", "/v1/runs?limit=2", expect=200)
    oldest = runs[-1]["run_id"]
    for path in (
        "/v1/runs?limit=50",
        "/v1/runs?limit=50&status=completed",
        f"/v1/runs?limit=50&before={oldest}",
        f"/v1/runs?limit=50&before={oldest}&status=failed",
        "/v1/threads?limit=50",
        "/v1/usage?group_by=day",
        "/v1/webhook-endpoints",
    ):
        await api.request("GET", path, expect=200)
    thread_id, run_id = await api.start_run("hello")
    await api.wait_for(run_id)
    for path in (
        f"/v1/runs/{run_id}",
        f"/v1/threads/{thread_id}",
        f"/v1/threads/{thread_id}/messages",
        f"/v1/threads/{thread_id}/runs",
    ):
        await api.request("GET", path, expect=200)
    await api.request("GET", "/metrics", expect=200)
    await api.request("GET", "/readyz", expect=200)

    # What the API did not need in this scenario (start-up, the admin command line, the
    # webhook worker) is run directly, so that every query is planned.
    queries, hooks = api.runtime.queries, WebhookQueries(store)
    admin = await queries.api_key_by_hash(key_sha256(ADMIN_KEY))
    assert admin is not None
    org_id = admin["org_id"]
    direct = {
        "Queries.user": lambda: queries.user(admin["user_id"]),
        "Queries.user_by_login": lambda: queries.user_by_login("bob"),
        "Queries.org": lambda: queries.org(org_id),
        "Queries.org_count": queries.org_count,
        "Queries.api_keys": lambda: queries.api_keys(org_id),
        "Queries.api_key_standing": lambda: queries.api_key_standing(admin["key_id"]),
        "Queries.name_or_email_taken": lambda: queries.name_or_email_taken("x", "x@y.org"),
        "Queries.last_message_position": lambda: queries.last_message_position(thread_id),
        "Queries.runs_with_status": lambda: queries.runs_with_status("running"),
        # Both of its queries, whichever the API happened to issue (names that are not a
        # method's, so that both always run).
        "Queries.run_status across orgs": lambda: queries.run_status(run_id),
        "Queries.run_status in an org": lambda: queries.run_status(run_id, org_id),
        "Queries.live_runs_by_status": queries.live_runs_by_status,
        "Queries.persona_hashes": queries.persona_hashes,
        "Queries.ready": queries.ready,
        "WebhookQueries.endpoint": lambda: hooks.endpoint(org_id, run_id),
        "WebhookQueries.endpoint_count": lambda: hooks.endpoint_count(org_id),
        "WebhookQueries.any_endpoint": hooks.any_endpoint,
        "WebhookQueries.deliveries": lambda: hooks.deliveries(run_id, 10, None),
        "WebhookQueries.delivery": lambda: hooks.delivery(run_id),
        "WebhookQueries.pending": lambda: hooks.pending(10),
    }
    for name, call in direct.items():
        if name not in called:
            await call()
    assert public_methods() - called == set()
    # The writer's count for the cap on an org's live runs, which no query method issues.
    cap = live_runs_below(org_id, 1)
    issued.setdefault(cap.count_sql, cap.params)
    assert len(issued) >= 25

    db = connect_database(api.runtime.config.db, read_only=True)
    try:
        if db.dialect == "postgres":
            db.execute("SET enable_seqscan = off")
            full_scans = postgres_full_scans
        else:
            full_scans = sqlite_full_scans
        problems = {
            sql: scans for sql, params in issued.items() if (scans := full_scans(db, sql, params))
        }
    finally:
        db.rollback()
        db.close()
    assert problems == {}


def test_a_full_scan_is_noticed(tmp_path: Any) -> None:
    """The check fails when it should: a query on a column without an index."""
    db = connect_database(str(tmp_path / "plans.db"))
    try:
        db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, status TEXT NOT NULL)")
        assert sqlite_full_scans(db, "SELECT run_id FROM runs WHERE status = ?", ("x",)) != []
        assert sqlite_full_scans(db, "SELECT status FROM runs WHERE run_id = ?", ("x",)) == []
    finally:
        db.close()


async def test_an_older_database_gets_a_new_index_when_a_store_opens_it(db_location: str) -> None:
    """Indexes are part of each projection's DDL, created if missing whenever a store opens a
    database: a log written before ``runs_by_status`` existed has it after the next start."""
    store = await open_event_store(db_location, all_projections())
    await store.close()
    db = connect_database(db_location)
    try:
        db.execute("DROP INDEX runs_by_status")
        assert not has_index(db, "runs_by_status")
    finally:
        db.close()
    store = await open_event_store(db_location, all_projections())
    await store.close()
    db = connect_database(db_location)
    try:
        assert has_index(db, "runs_by_status")
    finally:
        db.close()


def has_index(db: Database, name: str) -> bool:
    if db.dialect == "postgres":
        sql = "SELECT 1 FROM pg_indexes WHERE indexname = ? AND schemaname = current_schema()"
    else:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?"
    return db.fetch_one(sql, (name,)) is not None
