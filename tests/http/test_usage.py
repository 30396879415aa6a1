"""``GET /v1/usage`` through the real app: the caller's org only, totals equal to its runs'."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from runs.auth import key_sha256
from tests.conftest import ADMIN_KEY, Api, app_factory

ROUTES = [
    {
        "id": "cheap",
        "provider": "scripted",
        "model": "model-a",
        "input_usd_per_mtok": 3.0,
        "output_usd_per_mtok": 15.0,
        "cache_read_usd_per_mtok": 0.3,
        "credits_multiplier": 1.5,
        "default": True,
    },
    {
        "id": "dear",
        "provider": "scripted",
        "model": "model-b",
        "input_usd_per_mtok": 75.0,
        "output_usd_per_mtok": 150.0,
        "credits_multiplier": 3.0,
    },
]
FIGURES = ("input_tokens", "output_tokens", "cost_usd", "credits_used")


@pytest.fixture
async def priced(aiohttp_client: Any, make_app: Callable[..., web.Application]) -> Api:
    return Api(await aiohttp_client(make_app(routes=ROUTES)), ADMIN_KEY)


@pytest.fixture
async def priced_on_both(aiohttp_client: Any, db_location: str) -> Api:
    """The priced routes on each backend (SQLite file, PostgreSQL schema)."""
    return Api(await aiohttp_client(app_factory(db_location)(routes=ROUTES)), ADMIN_KEY)


async def run_to_end(api: Api, content: str, key: str | None = None, **body: Any) -> str:
    thread_id = await api.create_thread(key=key)
    await api.add_message(thread_id, content, key=key)
    run_id = await api.create_run(thread_id, key=key, **body)
    await api.wait_for(run_id, key=key)
    return run_id


def today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


async def usage(api: Api, query: str = "", key: str | None = None) -> dict[str, Any]:
    _, body = await api.request("GET", f"/v1/usage{query}", key=key, expect=200)
    return dict(body)


def totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {name: sum(r[name] for r in rows) for name in ("runs", *FIGURES)}


def run_totals(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "runs": len(runs),
        "input_tokens": sum(r["total_input_tokens"] for r in runs),
        "output_tokens": sum(r["total_output_tokens"] for r in runs),
        "cost_usd": sum(r["total_cost_usd"] for r in runs),
        "credits_used": sum(r["credits_used"] for r in runs),
    }


def assert_same(got: dict[str, float], expected: dict[str, float]) -> None:
    assert set(got) == set(expected)
    for name, number in expected.items():
        assert math.isclose(got[name], number, rel_tol=1e-9, abs_tol=1e-12), (name, got, expected)


async def test_usage_totals_equal_the_runs_and_exclude_other_orgs(priced_on_both: Api) -> None:
    api = priced_on_both
    admin = await api.runtime.queries.api_key_by_hash(key_sha256(ADMIN_KEY))
    assert admin is not None
    await run_to_end(api, "one two three\n/cache 4")
    await run_to_end(api, "four five", route_id="dear")
    await run_to_end(api, "/fail")
    other = await api.new_org_key("elsewhere")
    await run_to_end(api, "other org words here and more", key=other, route_id="dear")

    started = today()
    _, mine = await api.request("GET", "/v1/runs?limit=200", expect=200)
    _, theirs = await api.request("GET", "/v1/runs?limit=200", key=other, expect=200)
    assert len(mine) == 3
    assert len(theirs) == 1
    assert theirs[0]["total_cost_usd"] > 0

    for group_by in ("day", "model", "user", "route"):
        report = await usage(api, f"?group_by={group_by}")
        assert report["group_by"] == group_by
        assert report["to"] in {started, today()}  # (a run at midnight: either day)
        assert_same(totals(report["rows"]), run_totals(mine))
        keys = [r["key"] for r in report["rows"]]
        assert keys == sorted(set(keys))
        elsewhere = await usage(api, f"?group_by={group_by}", key=other)
        assert_same(totals(elsewhere["rows"]), run_totals(theirs))

    by_model = {r["key"]: r for r in (await usage(api, "?group_by=model"))["rows"]}
    assert sorted(by_model) == ["model-a", "model-b"]
    assert by_model["model-a"]["runs"] == 2
    assert by_model["model-a"]["cache_read_tokens"] == 4
    assert by_model["model-b"]["runs"] == 1
    by_route = {r["key"]: r["runs"] for r in (await usage(api, "?group_by=route"))["rows"]}
    assert by_route == {"cheap": 2, "dear": 1}
    by_user = (await usage(api, "?group_by=user"))["rows"]
    assert [r["key"] for r in by_user] == [admin["user_id"]]
    days = [r["key"] for r in (await usage(api))["rows"]]
    assert days == sorted({r["created_at"][:10] for r in mine})


async def test_usage_defaults_to_the_last_30_days_and_filters_by_day(priced: Api) -> None:
    api = priced
    await run_to_end(api, "hello")
    report = await usage(api)
    last = dt.date.fromisoformat(today())
    assert report["from"] == (last - dt.timedelta(days=29)).isoformat()
    assert report["to"] == last.isoformat()
    assert report["group_by"] == "day"
    assert [r["runs"] for r in report["rows"]] == [1]

    yesterday = (last - dt.timedelta(days=1)).isoformat()
    assert (await usage(api, f"?from=2000-01-01&to={yesterday}"))["rows"] == []
    tomorrow = (last + dt.timedelta(days=1)).isoformat()
    assert (await usage(api, f"?from={tomorrow}&to={tomorrow}"))["rows"] == []
    only_today = await usage(api, f"?from={today()}&to={today()}")
    assert [r["key"] for r in only_today["rows"]] == [today()]
    assert (await usage(api, f"?to={yesterday}"))["from"] == (
        last - dt.timedelta(days=30)
    ).isoformat()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?from=2024-13-01", "from"),
        ("?from=2024-02-30", "from"),
        ("?from=yesterday", "from"),
        ("?from=20240101", "from"),
        ("?from=2024-1-01", "from"),
        ("?to=2024-01-01T00:00:00Z", "to"),
        ("?to=", "to"),
        ("?to=%EF%BC%92024-01-01", "to"),
        ("?group_by=week", "group_by"),
        ("?group_by=", "group_by"),
        ("?from=2024-02-01&to=2024-01-31", "from"),
        ("?from=2999-01-01", "from"),
    ],
)
async def test_bad_values_are_400_naming_the_field(api: Api, query: str, field: str) -> None:
    status, body = await api.request("GET", f"/v1/usage{query}")
    assert status == 400, body
    assert body["code"] == f"validation.{field}"
    assert body["details"]["field"] == field


async def test_the_earliest_dates_are_not_an_error(api: Api) -> None:
    report = await usage(api, "?to=0001-01-05")
    assert report["from"] == "0001-01-01"
    assert report["rows"] == []


async def test_usage_needs_auth(api: Api) -> None:
    async with api.client.get("/v1/usage") as r:
        assert r.status == 401
