"""Budgets (max_iterations, max_cost_usd), routes (config, defaults, errors) and personas
(resolution, immutability)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from runs.config import Config, ConfigError, Route, load_config
from runs.routes import SCRIPTED_MODEL, RouteTable
from server import RUNTIME
from tests.agent.conftest import (
    FAKE_ENV,
    MakeApi,
    anthropic_route,
    events_of,
    only,
    types_of,
    write_persona,
)
from tests.agent.fake_anthropic import FakeAnthropic, Sse, text_events
from tests.conftest import Api

# -- budgets ----------------------------------------------------------------------------------


async def test_max_iterations_ends_the_run(make_api: MakeApi, personas_dir: Path) -> None:
    write_persona(personas_dir, "short", 1, tools=["calculator"], max_iterations=1)
    write_persona(personas_dir, "short", 2, tools=["calculator"], max_iterations=2)
    api = await make_api(personas_dir=str(personas_dir))
    content = '/tool calculator {"expression": "1+1"}'  # needs two model calls

    thread_id, run_id = await api.start_run(content, persona_id="short@1")
    run = await api.wait_for(run_id)
    assert run["status"] == "failed"
    assert run["error_class"] == "budget.max_iterations"
    assert "max_iterations (1)" in run["error_message"]
    events = await events_of(api, run_id)
    assert len(only(events, "run.usage")) == 1  # the second call was never made
    assert only(events, "tool.result")[0]["output"] == "2"
    assert types_of(events)[-1] == "run.failed"
    assert only(events, "run.failed")[0]["error_class"] == "budget.max_iterations"
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert [m["role"] for m in messages] == ["user"]

    # Control: the same message with two iterations allowed completes.
    _, run_id = await api.start_run(content, persona_id="short@2")
    run = await api.wait_for(run_id)
    assert run["status"] == "completed"
    assert len(only(await events_of(api, run_id), "run.usage")) == 2


def priced_scripted(**prices: float) -> dict[str, object]:
    """A config entry for the always-present ``scripted`` route, with prices."""
    return {"id": "scripted", "provider": "scripted", "model": SCRIPTED_MODEL, **prices}


async def test_cost_cap_is_checked_after_every_model_call(
    make_api: MakeApi, personas_dir: Path
) -> None:
    # $0.001 per output token, nothing for input: the scripted tool call reports 1 output
    # token (call 1), its reply "tool calculator returned: 2" 4 tokens (call 2).
    write_persona(personas_dir, "capped", 1, tools=["calculator"], max_cost_usd=0.0025)
    write_persona(personas_dir, "capped", 2, tools=["calculator"], max_cost_usd=0.0005)
    api = await make_api(
        personas_dir=str(personas_dir),
        routes=[priced_scripted(output_usd_per_mtok=1000.0, credits_multiplier=1.5)],
    )
    content = '/tool calculator {"expression": "1+1"}'

    # Under the cap after call 1, over it after call 2: the check is not only at the start.
    thread_id, run_id = await api.start_run(content, persona_id="capped@1")
    run = await api.wait_for(run_id)
    assert run["status"] == "failed"
    assert run["error_class"] == "budget.cost_exceeded"
    events = await events_of(api, run_id)
    usages = only(events, "run.usage")
    assert [u["output_tokens"] for u in usages] == [1, 4]
    assert [u["cost_usd"] for u in usages] == [pytest.approx(0.001), pytest.approx(0.004)]
    assert types_of(events)[-2:] == ["run.usage", "run.failed"]
    assert "run.completed" not in types_of(events)
    assert run["total_cost_usd"] == pytest.approx(0.005)
    assert run["credits_used"] == math.ceil(0.005 * 1000 * 1.5) == 8
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert [m["role"] for m in messages] == ["user"]

    # Over the cap after the very first call: the tool it asked for never runs.
    _, run_id = await api.start_run(content, persona_id="capped@2")
    run = await api.wait_for(run_id)
    assert run["error_class"] == "budget.cost_exceeded"
    events = await events_of(api, run_id)
    assert len(only(events, "run.usage")) == 1
    assert only(events, "tool.result") == []


async def test_scripted_route_prices_come_from_config(make_api: MakeApi) -> None:
    api = await make_api(
        routes=[
            priced_scripted(
                input_usd_per_mtok=2.0,
                output_usd_per_mtok=10.0,
                cache_read_usd_per_mtok=1.0,
                credits_multiplier=3.0,
            )
        ]
    )
    _, run_id = await api.start_run("/cache 7\none two three")
    run = await api.wait_for(run_id)
    [usage] = only(await events_of(api, run_id), "run.usage")
    expected = (usage["input_tokens"] * 2.0 + usage["output_tokens"] * 10.0 + 7 * 1.0) / 1_000_000
    assert usage["cache_read_tokens"] == 7
    assert usage["input_tokens"] > 0
    assert usage["cost_usd"] == pytest.approx(expected)
    assert run["total_cost_usd"] == pytest.approx(expected)
    assert run["credits_used"] == math.ceil(round(expected * 1000 * 3.0, 9))
    assert run["cache_hit_rate"] == pytest.approx(7 / (usage["input_tokens"] + 7))


# -- routes -----------------------------------------------------------------------------------


async def test_unknown_route_is_422_route_not_found(api: Api) -> None:
    thread_id = await api.create_thread()
    await api.add_message(thread_id, "hi")
    status, body = await api.request(
        "POST", f"/v1/threads/{thread_id}/runs", json={"route_id": "nope"}
    )
    assert (status, body["code"]) == (422, "policy.route_not_found")
    assert body["details"]["route_id"] == "nope"
    _, runs = await api.request("GET", f"/v1/threads/{thread_id}/runs", expect=200)
    assert runs == []


async def test_route_without_its_key_is_422_route_unavailable(make_api: MakeApi) -> None:
    api = await make_api(
        routes=[
            {
                "id": "claude",
                "provider": "anthropic",
                "model": "claude-x",
                "api_key_env": "UNSET_KEY_VARIABLE",
            }
        ],
        env={},
    )
    thread_id = await api.create_thread()
    await api.add_message(thread_id, "hi")
    status, body = await api.request(
        "POST", f"/v1/threads/{thread_id}/runs", json={"route_id": "claude"}
    )
    assert (status, body["code"]) == (422, "policy.route_unavailable")
    assert "UNSET_KEY_VARIABLE" in body["message"]
    # No default among the configured routes: runs without a route_id use ``scripted``.
    run_id = await api.create_run(thread_id)
    [started] = only(await events_of(api, run_id), "run.started")
    assert (started["route_id"], started["provider"], started["model"]) == (
        "scripted",
        "scripted",
        SCRIPTED_MODEL,
    )


def test_default_route_without_config() -> None:
    table = RouteTable(Config(), {})
    assert table.default_id == "scripted"
    assert set(table.routes) == {"scripted"}
    assert table.resolve(None).provider == "scripted"
    with pytest.raises(Exception, match="does not exist") as info:
        table.resolve("anthropic")
    assert getattr(info.value, "code", None) == "policy.route_not_found"

    table = RouteTable(Config(), {"ANTHROPIC_API_KEY": "sk-ant-test"})
    assert table.default_id == "anthropic"
    assert set(table.routes) == {"scripted", "anthropic"}
    route = table.resolve(None)
    assert (route.id, route.provider, route.api_key_env) == (
        "anthropic",
        "anthropic",
        "ANTHROPIC_API_KEY",
    )
    assert table.api_key(route) == "sk-ant-test"
    assert table.resolve("scripted").provider == "scripted"
    assert RouteTable(Config(), {"ANTHROPIC_API_KEY": ""}).default_id == "scripted"


def test_configured_routes() -> None:
    config = load_config(
        None,
        env={},
        overrides={
            "routes": [
                {"id": "a", "provider": "anthropic", "model": "m", "api_key_env": "K"},
                {"id": "scripted", "provider": "scripted", "model": "s", "input_usd_per_mtok": 5},
            ]
        },
    )
    # A config of its own replaces the automatic ``anthropic`` route even with the key set.
    table = RouteTable(config, {"ANTHROPIC_API_KEY": "sk-ant-test", "K": "k"})
    assert set(table.routes) == {"a", "scripted"}
    assert table.default_id == "scripted"
    assert table.routes["scripted"].input_usd_per_mtok == 5
    assert table.resolve("a").model == "m"

    with pytest.raises(ConfigError, match="more than one default"):
        RouteTable(
            Config(
                routes=[
                    Route(id="x", provider="scripted", model="s", default=True),
                    Route(id="y", provider="scripted", model="s", default=True),
                ]
            ),
            {},
        )
    with pytest.raises(ConfigError, match="provider must be"):
        RouteTable(Config(routes=[Route(id="x", provider="openai", model="g")]), {})


# -- personas ---------------------------------------------------------------------------------


@pytest.fixture
def helper_personas(personas_dir: Path) -> Path:
    write_persona(personas_dir, "helper", 1, system_prompt="helper one", tools=["calculator"])
    write_persona(
        personas_dir,
        "helper",
        2,
        system_prompt="helper two",
        tools=["current_time"],
        max_output_tokens=321,
    )
    return personas_dir


@pytest.mark.parametrize(
    ("persona_id", "resolved"),
    [
        ("helper", "helper@2"),
        ("helper@1", "helper@1"),
        ("helper@2", "helper@2"),
        (None, "default@1"),
        ("", "default@1"),
        ("default", "default@1"),
    ],
)
async def test_persona_resolution(
    make_api: MakeApi, helper_personas: Path, persona_id: str | None, resolved: str
) -> None:
    api = await make_api(personas_dir=str(helper_personas))
    body = {} if persona_id is None else {"persona_id": persona_id}
    _, run_id = await api.start_run("hello", **body)
    run = await api.wait_for(run_id)
    assert run["status"] == "completed"
    assert run["persona_id"] == resolved
    [started] = only(await events_of(api, run_id), "run.started")
    assert started["persona_id"] == resolved
    _, listed = await api.request("GET", "/v1/runs", expect=200)
    assert [(r["run_id"], r["persona_id"]) for r in listed] == [(run_id, resolved)]


@pytest.mark.parametrize("persona_id", ["nobody", "helper@3", "helper@x", "helper@"])
async def test_unknown_persona_is_422(
    make_api: MakeApi, helper_personas: Path, persona_id: str
) -> None:
    api = await make_api(personas_dir=str(helper_personas))
    thread_id = await api.create_thread()
    await api.add_message(thread_id, "hi")
    status, body = await api.request(
        "POST", f"/v1/threads/{thread_id}/runs", json={"persona_id": persona_id}
    )
    assert (status, body["code"]) == (422, "validation.persona_not_found")


async def test_the_persona_shapes_the_model_request(
    make_api: MakeApi, helper_personas: Path, fake: FakeAnthropic
) -> None:
    api = await make_api(
        personas_dir=str(helper_personas), routes=[anthropic_route(fake.url)], env=FAKE_ENV
    )
    fake.add(Sse(text_events(["hi"])), Sse(text_events(["hi"])))
    for persona_id in ("helper", "helper@1"):
        _, run_id = await api.start_run("hello", persona_id=persona_id)
        assert (await api.wait_for(run_id))["status"] == "completed"
    latest, first = fake.requests
    assert latest["system"][0]["text"] == "helper two"
    assert [t["name"] for t in latest["tools"]] == ["current_time"]
    assert latest["max_tokens"] == 321
    assert first["system"][0]["text"] == "helper one"
    assert [t["name"] for t in first["tools"]] == ["calculator"]


async def test_a_changed_persona_file_is_refused_at_start(
    make_app: Callable[..., web.Application], personas_dir: Path
) -> None:
    path = write_persona(personas_dir, "pinned", 1, tools=["calculator"])

    async def start_and_stop() -> None:
        runtime = make_app(personas_dir=str(personas_dir))[RUNTIME]
        await runtime.start()
        await runtime.stop()

    await start_and_stop()
    # Comments and layout do not matter; the definition does.
    path.write_text("# a comment\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    await start_and_stop()
    # A new version beside it is fine.
    write_persona(personas_dir, "pinned", 2, tools=["calculator"], max_iterations=3)
    await start_and_stop()

    write_persona(personas_dir, "pinned", 1, tools=["calculator", "current_time"])
    runtime = make_app(personas_dir=str(personas_dir))[RUNTIME]
    with pytest.raises(ConfigError, match=r"pinned@1 differs") as info:
        await runtime.start()
    assert "immutable" in str(info.value)
    assert runtime.store.closed

    # Each version was recorded once, with its definition, however many starts there were.
    path.write_text(path.read_text(encoding="utf-8").replace(', "current_time"', ""))
    runtime = make_app(personas_dir=str(personas_dir))[RUNTIME]
    await runtime.start()
    try:
        recorded = [
            json.loads(e.data)
            for e in await runtime.store.read_all(0, 10_000)
            if e.type == "persona.recorded"
        ]
    finally:
        await runtime.stop()
    ids = sorted(r["persona_id"] for r in recorded)
    assert ids == ["default@1", "pinned@1", "pinned@2"]
    pinned = next(r for r in recorded if r["persona_id"] == "pinned@1")
    assert pinned["definition"]["tools"] == ["calculator"]
    assert len(pinned["content_sha256"]) == 64
