"""``GET /metrics``: parsed with the official parser, values moving as runs happen."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from runs.config import Route
from runs.providers.base import ModelRequest, Provider, ProviderError, ProviderEvent
from runs.providers.scripted import ScriptedProvider
from tests.conftest import ADMIN_KEY, Api, app_factory

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

PRICED = {
    "id": "priced",
    "provider": "scripted",
    "model": "scripted-priced",
    "input_usd_per_mtok": 3.0,
    "output_usd_per_mtok": 15.0,
    "cache_read_usd_per_mtok": 0.3,
    "credits_multiplier": 2.0,
    "default": True,
}

# The families operators build dashboards on, by name (the list, written out).
FAMILIES = {
    "runlog_http_requests_total",
    "runlog_http_request_duration_seconds",
    "runlog_events_appended_total",
    "runlog_commit_batch_events",
    "runlog_commit_duration_seconds",
    "runlog_log_head_position",
    "runlog_sse_connections",
    "runlog_sse_frames_sent_total",
    "runlog_runs_live",
    "runlog_runs_finished_total",
    "runlog_provider_call_duration_seconds",
    "runlog_provider_time_to_first_token_seconds",
    "runlog_provider_errors_total",
    "runlog_provider_retries_total",
    "runlog_tokens_total",
    "runlog_cost_usd_total",
}


async def scrape(api: Api, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with api.client.get("/metrics", headers=headers) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def usage_of(api: Api, run_id: str) -> dict[str, float]:
    """The run's usage summed from its own ``run.usage`` events in the log."""
    totals = dict.fromkeys(("input", "output", "cache_read", "cache_write", "cost"), 0.0)
    for event in await api.runtime.store.read_stream(f"run-{run_id}", 0, 1000):
        if event.type == "run.usage":
            data = json.loads(event.data)
            totals["input"] += data["input_tokens"]
            totals["output"] += data["output_tokens"]
            totals["cache_read"] += data["cache_read_tokens"]
            totals["cache_write"] += data["cache_write_tokens"]
            totals["cost"] += data["cost_usd"]
    return totals


async def priced_api(aiohttp_client: Any, make_app: Callable[..., web.Application]) -> Api:
    return Api(await aiohttp_client(make_app(routes=[PRICED])), ADMIN_KEY)


async def test_every_family_is_exposed_with_its_exact_name(api: Api) -> None:
    _, run_id = await api.start_run("hello")
    await api.wait_for(run_id)
    async with api.client.get("/metrics") as r:
        text = await r.text()
    names = {family.name for family in text_string_to_metric_families(text)}
    # The parser names a counter's family without its ``_total`` sample suffix.
    exposed = names | {f"{n}_total" for n in names}
    assert exposed >= FAMILIES, sorted(FAMILIES - exposed)


async def test_a_completed_run_moves_the_counters_by_its_usage(
    aiohttp_client: Any, make_app: Callable[..., web.Application]
) -> None:
    api = await priced_api(aiohttp_client, make_app)
    before = await scrape(api)
    head_before = await api.runtime.store.head()
    _, run_id = await api.start_run("one two three four\n/cache 5")
    run = await api.wait_for(run_id)
    assert run["status"] == "completed"
    after = await scrape(api)

    assert (
        moved(before, after, "runlog_runs_finished_total", status="completed", error_class="") == 1
    )
    assert moved(before, after, "runlog_runs_finished_total", status="failed", error_class="") == 0
    usage = await usage_of(api, run_id)
    assert usage["input"] > 0
    assert usage["output"] > 0
    assert usage["cache_read"] == 5
    model = "scripted-priced"
    for kind in ("input", "output", "cache_read", "cache_write"):
        assert moved(before, after, "runlog_tokens_total", model=model, kind=kind) == usage[kind]
    cost = moved(before, after, "runlog_cost_usd_total", model=model)
    assert cost > 0
    assert abs(cost - run["total_cost_usd"]) < 1e-12
    assert abs(cost - usage["cost"]) < 1e-12

    # The log's own figures: what was appended, and where the head is now.
    head = await api.runtime.store.head()
    assert moved(before, after, "runlog_events_appended_total") == head - head_before
    assert value(after, "runlog_log_head_position") == head
    assert moved(before, after, "runlog_commit_batch_events_sum") == head - head_before
    assert moved(before, after, "runlog_commit_duration_seconds_count") >= 1

    # One model call, timed, with its first token.
    labels = {"route": "priced", "model": model}
    assert moved(before, after, "runlog_provider_call_duration_seconds_count", **labels) == 1
    assert moved(before, after, "runlog_provider_time_to_first_token_seconds_count", **labels) == 1

    # Requests are counted by route template; no series is named after an id.
    assert (
        moved(
            before,
            after,
            "runlog_http_requests_total",
            route="/v1/runs/{run_id}",
            method="GET",
            status="200",
        )
        >= 1
    )
    assert (
        moved(
            before,
            after,
            "runlog_http_request_duration_seconds_count",
            route="/v1/threads/{thread_id}/runs",
            method="POST",
        )
        == 1
    )
    for _, labels_set in after:
        assert all(run_id not in v for _, v in labels_set)


class FlakyOnce:
    """Fails each run's first model call with a retryable error, then answers as scripted."""

    def __init__(self) -> None:
        self.calls = 0
        self.scripted = ScriptedProvider()

    async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        self.calls += 1
        if self.calls == 1:
            raise ProviderError("provider.overloaded", "try again", retryable=True)
        async for item in self.scripted.stream(request):
            yield item


async def test_retries_errors_and_failures_are_counted(
    aiohttp_client: Any, make_app: Callable[..., web.Application]
) -> None:
    flaky = FlakyOnce()

    def provider_for(route: Route) -> Provider:
        return flaky if route.id == "flaky" else ScriptedProvider()

    route = {"id": "flaky", "provider": "scripted", "model": "m", "retry_base_delay_s": 0.001}
    client = await aiohttp_client(
        make_app(routes=[route, {**PRICED, "default": False}], provider_for=provider_for)
    )
    api = Api(client, ADMIN_KEY)
    before = await scrape(api)
    _, retried = await api.start_run("hello", route_id="flaky")
    assert (await api.wait_for(retried))["status"] == "completed"
    _, failed = await api.start_run("/fail", route_id="priced")
    assert (await api.wait_for(failed))["status"] == "failed"
    after = await scrape(api)

    assert moved(before, after, "runlog_provider_retries_total", route="flaky") == 1
    assert (
        moved(
            before,
            after,
            "runlog_provider_errors_total",
            route="flaky",
            error_class="provider.overloaded",
        )
        == 1
    )
    assert (
        moved(
            before,
            after,
            "runlog_provider_errors_total",
            route="priced",
            error_class="provider.error",
        )
        == 1
    )
    # A failure that is not retryable is not retried.
    assert moved(before, after, "runlog_provider_retries_total", route="priced") == 0
    finished = "runlog_runs_finished_total"
    assert moved(before, after, finished, status="completed", error_class="") == 1
    assert moved(before, after, finished, status="failed", error_class="provider.error") == 1
    # Both attempts of the retried call were timed.
    calls = "runlog_provider_call_duration_seconds_count"
    assert moved(before, after, calls, route="flaky", model="m") == 2


async def test_live_gauges_come_from_the_log_and_are_right_after_a_restart(
    aiohttp_client: Any, db_location: str
) -> None:
    make_app = app_factory(db_location)
    first = Api(await aiohttp_client(make_app()), ADMIN_KEY)
    waiting = []
    for question in ("colour?", "size?"):
        _, run_id = await first.start_run(f"/ask {question}")
        await first.wait_for(run_id, {"waiting_for_input"})
        waiting.append(run_id)
    _, cancelled = await first.start_run("/ask never answered")
    await first.wait_for(cancelled, {"waiting_for_input"})
    await first.request("POST", f"/v1/runs/{cancelled}:cancel", expect=200)
    samples = await scrape(first)
    assert value(samples, "runlog_runs_live", status="waiting_for_input") == 2
    assert value(samples, "runlog_runs_live", status="running") == 0
    head = await first.runtime.store.head()
    await first.client.close()

    # A new process on the same file: no counter has seen these runs start.
    second = Api(await aiohttp_client(make_app()), ADMIN_KEY)
    samples = await scrape(second)
    assert value(samples, "runlog_runs_live", status="waiting_for_input") == 2
    assert value(samples, "runlog_runs_live", status="running") == 0
    assert value(samples, "runlog_log_head_position") == head == await second.runtime.store.head()

    # Answering one moves the gauge: it follows the read model, not a count kept since start.
    await second.request(
        "POST", f"/v1/runs/{waiting[0]}/input", json={"content": "red"}, expect=200
    )
    await second.wait_for(waiting[0])
    samples = await scrape(second)
    assert value(samples, "runlog_runs_live", status="waiting_for_input") == 1


async def test_sse_connections_and_frames(api: Api) -> None:
    _, done = await api.start_run("hello")
    await api.wait_for(done)
    events = await api.runtime.store.read_stream(f"run-{done}", 0, 1000)
    before = await scrape(api)
    status, _ = await api.request("GET", f"/v1/runs/{done}/events?follow=0")
    assert status == 200
    after = await scrape(api)
    assert moved(before, after, "runlog_sse_frames_sent_total") == len(events)

    _, waiting = await api.start_run("/ask ready?")
    await api.wait_for(waiting, {"waiting_for_input"})
    open_before = value(await scrape(api), "runlog_sse_connections")
    async with api.client.get(f"/v1/runs/{waiting}/events", headers=api.headers()) as r:
        assert await r.content.readline() == b": ping\n"
        assert value(await scrape(api), "runlog_sse_connections") == open_before + 1
        await api.request("POST", f"/v1/runs/{waiting}/input", json={"content": "yes"}, expect=200)
        body = await r.content.read()  # to the end: the stream closes after run.completed
    assert b'"type":"run.completed"' in body
    assert value(await scrape(api), "runlog_sse_connections") == open_before


async def test_metrics_token_is_required_when_configured(
    aiohttp_client: Any, make_app: Callable[..., web.Application]
) -> None:
    token = "metrics-s3cret-token"
    api = Api(await aiohttp_client(make_app(metrics_token=token)), ADMIN_KEY)
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {ADMIN_KEY}"},  # an API key is not the metrics token
        {"Authorization": f"Basic {token}"},
        {"Authorization": f"Bearer {token}x"},
    ):
        async with api.client.get("/metrics", headers=headers) as r:
            assert r.status == 401, headers
            body = msgspec.json.decode(await r.read())
            assert body["code"] == "auth.unauthorized"
            assert body["trace_id"] == r.headers["X-Trace-Id"]
    samples = await scrape(api, token)
    assert value(samples, "runlog_log_head_position") == await api.runtime.store.head()


async def test_metrics_are_open_without_a_token_and_outside_v1_auth(api: Api) -> None:
    async with api.client.get("/metrics") as r:
        assert r.status == 200


async def test_a_method_the_api_does_not_know_is_counted_as_other(api: Api) -> None:
    before = await scrape(api)
    for method in ("PROPFIND", "MKCOL"):
        async with api.client.request(method, "/healthz") as r:
            assert r.status == 405
    after = await scrape(api)
    labels = {"route": "unmatched", "method": "OTHER", "status": "405"}
    assert moved(before, after, "runlog_http_requests_total", **labels) == 2
    assert not any(dict(key[1]).get("method") in ("PROPFIND", "MKCOL") for key in after), (
        "a client's method must not name a series"
    )
