"""Runs over HTTP: create, list, detail, cancel, failures, accounting and concurrency."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from runs.auth import key_sha256
from runs.events import run_stream, thread_stream
from runs.ids import is_id
from runs.run import ms_between
from tests.conftest import ADMIN_KEY, Api

# Every field of the Runs API's ``GET /v1/runs`` example, plus ``cancelled_at`` (our one extra).
SPEC_RUN_KEYS = {
    "run_id",
    "org_id",
    "thread_id",
    "status",
    "model",
    "persona_id",
    "total_input_tokens",
    "total_output_tokens",
    "total_cost_usd",
    "duration_ms",
    "cache_hit_rate",
    "credits_used",
    "created_at",
    "completed_at",
    "failed_at",
    "created_by_user_id",
    "created_by_user_name",
    "created_by_email",
}
RUN_KEYS = SPEC_RUN_KEYS | {"cancelled_at"}
SPEC_DETAIL_KEYS = {
    "run_id",
    "org_id",
    "thread_id",
    "created_by_user_id",
    "status",
    "created_at",
    "trace_id",
}
DETAIL_KEYS = (
    RUN_KEYS
    | SPEC_DETAIL_KEYS
    | {"route_id", "error_class", "error_message", "as_of_seq", "usage_estimated", "retry_of"}
)
NO_TOOL_CALLS = {"completed": [], "interrupted": [], "not_started": []}


async def admin_ids(api: Api) -> tuple[str, str]:
    key = await api.runtime.queries.api_key_by_hash(key_sha256(ADMIN_KEY))
    assert key is not None
    return key["org_id"], key["user_id"]


async def run_events(api: Api, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    events = await api.runtime.store.read_stream(run_stream(run_id), 0, 10_000)
    return [(e.seq, e.type, json.loads(e.data)) for e in events]


async def listed_run(api: Api, run_id: str) -> dict[str, Any]:
    _, runs = await api.request("GET", "/v1/runs?limit=200", expect=200)
    (item,) = [r for r in runs if r["run_id"] == run_id]
    return dict(item)


# -- create -----------------------------------------------------------------------------------


async def test_create_run_returns_run_id_and_trace_id_matching_the_header(api_on_both: Api) -> None:
    api = api_on_both
    thread_id = await api.create_thread()
    await api.add_message(thread_id, "hello")
    async with api.client.post(
        f"/v1/threads/{thread_id}/runs", json={}, headers=api.headers()
    ) as r:
        assert r.status == 201
        body = await r.json()
        header = r.headers["X-Trace-Id"]
    assert set(body) == {"run_id", "trace_id"}
    assert is_id(body["run_id"])
    assert body["trace_id"] == header
    run = await api.wait_for(body["run_id"])
    assert run["trace_id"] == header


async def test_create_run_uses_a_well_formed_incoming_trace_id(api: Api) -> None:
    thread_id = await api.create_thread()
    headers = api.headers(**{"X-Trace-Id": "my-trace-0123456789"})
    async with api.client.post(f"/v1/threads/{thread_id}/runs", json={}, headers=headers) as r:
        assert r.status == 201
        assert r.headers["X-Trace-Id"] == "my-trace-0123456789"
        assert (await r.json())["trace_id"] == "my-trace-0123456789"
    headers = api.headers(**{"X-Trace-Id": "bad id with spaces"})
    async with api.client.get("/v1/threads", headers=headers) as r:
        assert r.headers["X-Trace-Id"] != "bad id with spaces"
        assert len(r.headers["X-Trace-Id"]) >= 8


async def test_run_started_is_seq_1_and_records_the_run(api: Api) -> None:
    org_id, user_id = await admin_ids(api)
    thread_id = await api.create_thread()
    async with api.client.post(
        f"/v1/threads/{thread_id}/runs", json={}, headers=api.headers()
    ) as r:
        created = await r.json()
    run_id = created["run_id"]
    await api.wait_for(run_id)
    store = api.runtime.store
    (first,) = await store.read_stream(run_stream(run_id), 0, 1)
    assert (first.seq, first.type) == (1, "run.started")
    data = json.loads(first.data)
    assert data["run_id"] == run_id
    assert data["thread_id"] == thread_id
    assert data["org_id"] == org_id
    assert data["created_by_user_id"] == user_id
    assert data["trace_id"] == created["trace_id"]
    assert data["route_id"] == "scripted"
    assert data["model"] == "scripted-1"
    assert data["persona_id"] == "default@1"
    # The thread records that the run took it, appended together with run.started.
    thread_events = await store.read_stream(thread_stream(thread_id), 0, 100)
    (took,) = [e for e in thread_events if e.type == "thread.run_started"]
    assert json.loads(took.data) == {"run_id": run_id}
    assert took.position + 1 == first.position
    assert took.created_at == first.created_at


async def test_explicit_route_and_persona_are_recorded(api: Api) -> None:
    thread_id = await api.create_thread()
    run_id = await api.create_run(thread_id, route_id="scripted", persona_id="default")
    run = await api.wait_for(run_id)
    assert run["route_id"] == "scripted"
    assert run["persona_id"] == "default@1"  # a bare key resolves to its latest version


# -- reads ------------------------------------------------------------------------------------


async def test_list_runs_has_every_field_of_the_spec_example(api_on_both: Api) -> None:
    api = api_on_both
    org_id, user_id = await admin_ids(api)
    thread_id, run_id = await api.start_run("one two three four")
    await api.wait_for(run_id)
    item = await listed_run(api, run_id)
    assert set(item) == RUN_KEYS
    assert item["run_id"] == run_id
    assert item["org_id"] == org_id
    assert item["thread_id"] == thread_id
    assert item["status"] == "completed"
    assert item["model"] == "scripted-1"
    assert item["persona_id"] == "default@1"
    # Scripted usage: input = words of the prompt, output = words of the reply.
    assert item["total_input_tokens"] == 4
    assert item["total_output_tokens"] == 5  # "echo: one two three four"
    assert item["total_cost_usd"] == 0
    assert item["cache_hit_rate"] == 0.0
    assert item["credits_used"] == 0
    assert item["completed_at"] is not None
    assert item["failed_at"] is None
    assert item["cancelled_at"] is None
    assert item["duration_ms"] == ms_between(item["created_at"], item["completed_at"])
    assert item["duration_ms"] >= 0
    assert item["created_by_user_id"] == user_id
    assert item["created_by_user_name"] == "admin"
    assert item["created_by_email"] == "admin@localhost"


async def test_usage_counts_the_whole_prompt_of_a_later_run(api: Api) -> None:
    thread_id, first = await api.start_run("a b")
    await api.wait_for(first)
    await api.add_message(thread_id, "c d e")
    second = await api.create_run(thread_id)
    run = await api.wait_for(second)
    # The prompt is the thread so far: "a b" + "echo: a b" + "c d e".
    assert run["total_input_tokens"] == 2 + 3 + 3
    assert run["total_output_tokens"] == 4
    usage = [d for _, t, d in await run_events(api, second) if t == "run.usage"]
    assert len(usage) == 1
    assert usage[0]["input_tokens"] == 8
    assert usage[0]["output_tokens"] == 4
    assert usage[0]["model"] == "scripted-1"
    assert usage[0]["cost_usd"] == 0


async def test_accounting_of_a_priced_route(
    aiohttp_client: Any, make_app: Callable[..., web.Application]
) -> None:
    route = {
        "id": "priced",
        "provider": "scripted",
        "model": "scripted-1",
        "input_usd_per_mtok": 1000.0,
        "output_usd_per_mtok": 2000.0,
        "cache_read_usd_per_mtok": 100.0,
        "credits_multiplier": 2.0,
    }
    api = Api(await aiohttp_client(make_app(routes=[route])), ADMIN_KEY)
    _, run_id = await api.start_run("alpha beta gamma\n/cache 4", route_id="priced")
    run = await api.wait_for(run_id)
    assert run["status"] == "completed"
    assert run["route_id"] == "priced"
    assert run["total_input_tokens"] == 5  # the directive line is part of the prompt
    assert run["total_output_tokens"] == 4  # "echo: alpha beta gamma"
    cost = (5 * 1000 + 4 * 2000 + 4 * 100) / 1_000_000
    assert abs(run["total_cost_usd"] - cost) < 1e-12
    assert run["credits_used"] == 27  # ceil(0.0134 * 1000 * 2)
    assert abs(run["cache_hit_rate"] - 4 / 9) < 1e-12
    assert await listed_run(api, run_id) == {k: run[k] for k in RUN_KEYS}


async def test_run_detail_has_the_spec_shape_plus_the_list_fields(api_on_both: Api) -> None:
    api = api_on_both
    _, run_id = await api.start_run("detail please")
    await api.wait_for(run_id)
    _, detail = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
    assert set(detail) == DETAIL_KEYS
    item = await listed_run(api, run_id)
    assert {k: detail[k] for k in RUN_KEYS} == item
    assert is_id(detail["run_id"])
    assert detail["route_id"] == "scripted"
    assert detail["error_class"] is None
    assert detail["error_message"] is None
    assert detail["as_of_seq"] is None
    (first,) = await api.runtime.store.read_stream(run_stream(run_id), 0, 1)
    assert detail["trace_id"] == json.loads(first.data)["trace_id"]


async def test_thread_runs_are_listed_newest_first(api_on_both: Api) -> None:
    api = api_on_both
    thread_id, first = await api.start_run("one")
    await api.wait_for(first)
    second = await api.create_run(thread_id)
    await api.wait_for(second)
    _, elsewhere = await api.start_run("other thread")
    await api.wait_for(elsewhere)

    _, runs = await api.request("GET", f"/v1/threads/{thread_id}/runs", expect=200)
    assert [r["run_id"] for r in runs] == [second, first]
    assert all(set(r) == {"run_id", "status", "created_at"} for r in runs)
    assert [r["status"] for r in runs] == ["completed", "completed"]
    _, newest = await api.request("GET", f"/v1/threads/{thread_id}/runs?limit=1", expect=200)
    assert [r["run_id"] for r in newest] == [second]


async def test_list_runs_is_newest_first_and_filters_by_status(api_on_both: Api) -> None:
    api = api_on_both
    _, done = await api.start_run("fine")
    await api.wait_for(done)
    _, failed = await api.start_run("/fail")
    await api.wait_for(failed)
    _, cancelled = await api.start_run("/slow 200\nslow")
    await api.request("POST", f"/v1/runs/{cancelled}:cancel", expect=200)
    _, waiting = await api.start_run("/ask your name?")
    await api.wait_for(waiting, {"waiting_for_input"})
    _, running = await api.start_run("/slow 200\nstill going")

    _, everything = await api.request("GET", "/v1/runs", expect=200)
    assert [r["run_id"] for r in everything] == [running, waiting, cancelled, failed, done]
    expected = {
        "completed": [done],
        "failed": [failed],
        "cancelled": [cancelled],
        "waiting_for_input": [waiting],
        "running": [running],
    }
    for status, ids in expected.items():
        _, runs = await api.request("GET", f"/v1/runs?status={status}", expect=200)
        assert [r["run_id"] for r in runs] == ids, status
        assert all(r["status"] == status for r in runs)
    await api.request("POST", f"/v1/runs/{running}:cancel", expect=200)


# -- cancel and failure -------------------------------------------------------------------------


async def test_cancel_a_slow_run(api_on_both: Api) -> None:
    api = api_on_both
    _, user_id = await admin_ids(api)
    thread_id, run_id = await api.start_run("/slow 200\nhello there")
    _, body = await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)
    last_seq = await api.runtime.store.last_seq(run_stream(run_id))
    assert body == {
        "ok": True,
        "status": "cancelled",
        "last_seq": last_seq,
        "tool_calls": NO_TOOL_CALLS,
    }
    # Cancelled as soon as the call returned: no waiting.
    _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
    assert run["status"] == "cancelled"
    assert run["cancelled_at"] is not None
    assert run["completed_at"] is None
    assert run["duration_ms"] == ms_between(run["created_at"], run["cancelled_at"])
    events = await run_events(api, run_id)
    types = [t for _, t, _ in events]
    assert types[0] == "run.started"
    assert types[-2:] == ["run.cancel_requested", "run.cancelled"]
    assert "run.completed" not in types
    assert events[-2][2]["user_id"] == user_id
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert [m["role"] for m in messages] == ["user"]
    _, thread = await api.request("GET", f"/v1/threads/{thread_id}", expect=200)
    assert thread["active_run_id"] is None
    # The supervisor holds no task for it any more, and nothing more is appended.
    assert run_id not in api.runtime.supervisor.tasks
    assert await run_events(api, run_id) == events


async def test_cancel_a_run_waiting_for_input(api_on_both: Api) -> None:
    api = api_on_both
    _, run_id = await api.start_run("/ask are you there?")
    await api.wait_for(run_id, {"waiting_for_input"})
    await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)
    _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
    assert run["status"] == "cancelled"
    types = [t for _, t, _ in await run_events(api, run_id)]
    assert types[-3:] == ["run.waiting_for_input", "run.cancel_requested", "run.cancelled"]


async def test_cancelling_a_terminal_run_changes_nothing(api: Api) -> None:
    _, done = await api.start_run("done soon")
    await api.wait_for(done)
    _, failed = await api.start_run("/fail")
    await api.wait_for(failed)
    _, cancelled = await api.start_run("/slow 200\nx")
    await api.request("POST", f"/v1/runs/{cancelled}:cancel", expect=200)
    store = api.runtime.store
    for run_id, status in [(done, "completed"), (failed, "failed"), (cancelled, "cancelled")]:
        before = await run_events(api, run_id)
        last = await store.last_seq(run_stream(run_id))
        head = await store.head()
        _, body = await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)
        # The receipt of how it ended.
        assert body == {"ok": True, "status": status, "last_seq": last, "tool_calls": NO_TOOL_CALLS}
        assert await store.last_seq(run_stream(run_id)) == last
        assert await store.head() == head
        assert await run_events(api, run_id) == before
        _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
        assert run["status"] == status


async def test_fail_directive_ends_the_run_with_provider_error(api: Api) -> None:
    thread_id, run_id = await api.start_run("/fail")
    run = await api.wait_for(run_id)
    assert run["status"] == "failed"
    assert run["error_class"] == "provider.error"
    assert run["error_message"]
    assert run["failed_at"] is not None
    assert run["completed_at"] is None
    assert run["duration_ms"] == ms_between(run["created_at"], run["failed_at"])
    events = await run_events(api, run_id)
    _, last_type, data = events[-1]
    assert last_type == "run.failed"
    assert set(data) == {"error_class", "message"}
    assert data["error_class"] == "provider.error"
    assert data["message"] == run["error_message"]
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert [m["role"] for m in messages] == ["user"]
    item = await listed_run(api, run_id)
    assert item["failed_at"] == run["failed_at"]
    assert item["status"] == "failed"


# -- concurrency ------------------------------------------------------------------------------


async def test_concurrent_creates_on_one_thread_give_exactly_one_run(api_on_both: Api) -> None:
    api = api_on_both
    thread_id = await api.create_thread()
    await api.add_message(thread_id, "/slow 100\nkeep busy")
    results = await asyncio.gather(
        *(api.request("POST", f"/v1/threads/{thread_id}/runs", json={}) for _ in range(20))
    )
    created = [body for status, body in results if status == 201]
    busy = [body for status, body in results if status == 409]
    assert len(created) == 1
    assert len(busy) == 19
    run_id = created[0]["run_id"]
    assert {b["code"] for b in busy} == {"runs.thread_busy"}
    assert all(set(b) == {"code", "message", "details", "trace_id"} for b in busy)
    _, runs = await api.request("GET", f"/v1/threads/{thread_id}/runs", expect=200)
    assert [r["run_id"] for r in runs] == [run_id]
    thread_events = await api.runtime.store.read_stream(thread_stream(thread_id), 0, 100)
    assert [e.type for e in thread_events].count("thread.run_started") == 1
    await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)


async def test_second_run_is_refused_while_one_is_live(api: Api) -> None:
    thread_id, first = await api.start_run("/slow 100\nbusy")
    status, body = await api.request("POST", f"/v1/threads/{thread_id}/runs", json={})
    assert status == 409
    assert body["code"] == "runs.thread_busy"
    assert body["details"]["active_run_id"] == first
    await api.wait_for(first)
    second = await api.create_run(thread_id)
    await api.wait_for(second)
    # A waiting run is live too; after it is cancelled the thread is free again.
    await api.add_message(thread_id, "/ask name?")
    third = await api.create_run(thread_id)
    await api.wait_for(third, {"waiting_for_input"})
    status, body = await api.request("POST", f"/v1/threads/{thread_id}/runs", json={})
    assert (status, body["code"]) == (409, "runs.thread_busy")
    await api.request("POST", f"/v1/runs/{third}:cancel", expect=200)
    fourth = await api.create_run(thread_id)
    await api.wait_for(fourth, {"waiting_for_input"})
    await api.request("POST", f"/v1/runs/{fourth}:cancel", expect=200)


async def test_org_live_run_limit(
    aiohttp_client: Any, make_app: Callable[..., web.Application]
) -> None:
    api = Api(await aiohttp_client(make_app(max_live_runs_per_org=2)), ADMIN_KEY)
    _, first = await api.start_run("/slow 500\nx")
    _, second = await api.start_run("/slow 500\ny")
    third_thread = await api.create_thread()
    status, body = await api.request("POST", f"/v1/threads/{third_thread}/runs", json={})
    assert status == 429
    assert body["code"] == "runs.limit_exceeded"
    assert body["details"]["limit"] == 2
    _, runs = await api.request("GET", f"/v1/threads/{third_thread}/runs", expect=200)
    assert runs == []
    # Another org has its own budget.
    other = await api.new_org_key()
    other_thread = await api.create_thread(key=other)
    await api.create_run(other_thread, key=other)
    # Once a run ends there is room again.
    await api.request("POST", f"/v1/runs/{first}:cancel", expect=200)
    third = await api.create_run(third_thread)
    for run_id in (second, third):
        await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)


async def test_org_live_run_limit_holds_under_concurrent_creates(
    aiohttp_client: Any, make_app: Callable[..., web.Application]
) -> None:
    api = Api(await aiohttp_client(make_app(max_live_runs_per_org=3)), ADMIN_KEY)
    threads = [await api.create_thread() for _ in range(8)]
    for thread_id in threads:
        await api.add_message(thread_id, "/slow 300\nbusy")
    results = await asyncio.gather(
        *(api.request("POST", f"/v1/threads/{t}/runs", json={}) for t in threads)
    )
    assert sorted(status for status, _ in results) == [201] * 3 + [429] * 5
    assert {b["code"] for status, b in results if status == 429} == {"runs.limit_exceeded"}
    _, live = await api.request("GET", "/v1/runs?status=running", expect=200)
    assert len(live) == 3
    for run in live:
        await api.request("POST", f"/v1/runs/{run['run_id']}:cancel", expect=200)


async def test_paging_runs_while_runs_are_created(
    aiohttp_client: Any, make_app: Callable[..., web.Application]
) -> None:
    api = Api(await aiohttp_client(make_app(max_live_runs_per_org=200)), ADMIN_KEY)

    async def new_run() -> str:
        return await api.create_run(await api.create_thread())

    existing = await asyncio.gather(*(new_run() for _ in range(14)))
    _, snapshot = await api.request("GET", "/v1/runs?limit=200", expect=200)
    at_start = [r["run_id"] for r in snapshot]
    assert sorted(at_start) == sorted(existing)

    stop = asyncio.Event()
    made: list[str] = []

    async def creator() -> None:
        while not stop.is_set():
            made.append(await new_run())

    background = asyncio.create_task(creator())
    seen: list[str] = []
    before: str | None = None
    try:
        while True:
            query = "limit=3" + (f"&before={before}" if before else "")
            _, page = await api.request("GET", f"/v1/runs?{query}", expect=200)
            assert len(page) <= 3
            if not page:
                break
            seen += [r["run_id"] for r in page]
            before = page[-1]["run_id"]
            made.append(await new_run())  # and one more between pages, for certain
    finally:
        stop.set()
        await background
    assert len(made) >= 5
    assert len(seen) == len(set(seen)), "a run was repeated"
    assert seen == sorted(seen, reverse=True)
    missing = set(at_start) - set(seen)
    assert not missing, f"paging skipped {missing}"
    for run_id in [*existing, *made]:
        await api.wait_for(run_id)


async def test_cancel_racing_the_end_of_a_run_leaves_one_terminal_event(
    aiohttp_client: Any, make_app: Callable[..., web.Application]
) -> None:
    api = Api(await aiohttp_client(make_app(max_live_runs_per_org=100)), ADMIN_KEY)

    async def start_and_cancel(yields: int) -> str:
        _, run_id = await api.start_run("quick answer please")
        for _ in range(yields):  # land the cancel at different points of the run
            await asyncio.sleep(0)
        _, body = await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)
        assert body["ok"] is True
        assert body["status"] in {"completed", "cancelled"}
        assert body["last_seq"] == await api.runtime.store.last_seq(run_stream(run_id))
        return run_id

    run_ids = await asyncio.gather(*(start_and_cancel(i * 25) for i in range(24)))
    statuses = set()
    for run_id in run_ids:
        _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
        assert run["status"] in {"completed", "cancelled"}
        statuses.add(run["status"])
        types = [t for _, t, _ in await run_events(api, run_id)]
        ends = [t for t in types if t in {"run.completed", "run.failed", "run.cancelled"}]
        assert ends == [types[-1]], types
        assert types[-1] == f"run.{run['status']}"
        # Whether the call was cut (estimated) or ended (reported), it is counted once.
        usages = [d for _, t, d in await run_events(api, run_id) if t == "run.usage"]
        assert len({u["call"] for u in usages}) == len(usages) <= 1
        assert run["total_input_tokens"] == sum(u["input_tokens"] for u in usages)
        assert run["total_output_tokens"] == sum(u["output_tokens"] for u in usages)
        assert run["usage_estimated"] == any(u["estimated"] for u in usages)
        _, thread = await api.request("GET", f"/v1/threads/{run['thread_id']}", expect=200)
        assert thread["active_run_id"] is None
    assert "cancelled" in statuses
