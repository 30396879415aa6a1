"""Fixtures of the agent-loop tests: the fake Anthropic server, apps with extra config, and
helpers that read a run's events straight from the log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from runs.events import run_stream
from runs.repository import read_run
from tests.agent.fake_anthropic import FakeAnthropic
from tests.conftest import ADMIN_KEY, Api

FAKE_KEY = "sk-test-fake-key-7f3a9c1e5b2d4f6a8c0e"
FAKE_ENV = {"FAKE_ANTHROPIC_KEY": FAKE_KEY}

# Prices per million tokens of the fake route (deliberately distinct, so a swapped field shows).
PRICES = {
    "input_usd_per_mtok": 3.0,
    "output_usd_per_mtok": 15.0,
    "cache_write_usd_per_mtok": 3.75,
    "cache_read_usd_per_mtok": 0.3,
}


def anthropic_route(url: str, **overrides: Any) -> dict[str, Any]:
    route = {
        "id": "fake",
        "provider": "anthropic",
        "model": "claude-test",
        "base_url": url,
        "api_key_env": "FAKE_ANTHROPIC_KEY",
        **PRICES,
        "credits_multiplier": 2.0,
        "default": True,
        "max_attempts": 3,
        "retry_base_delay_s": 0.01,
        "timeout_s": 10.0,
    }
    route.update(overrides)
    return route


class AgentApi(Api):
    """``Api`` whose ``wait_for`` cannot miss the last event of a run.

    ``tests.conftest.Api.wait_for`` reads the status, *then* the stream's last seq, then waits
    for an event after it: an event appended between the two reads (a run's terminal event,
    or the ``run.waiting_for_input`` after which nothing comes) is never awaited and the call
    times out. Here the seq is read first; the projection is written in the same transaction
    as the events, so the status read afterwards covers at least that seq.
    """

    async def wait_for(
        self, run_id: str, statuses: set[str] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        wanted = statuses or {"completed", "failed", "cancelled"}
        store = self.runtime.store
        async with asyncio.timeout(timeout):
            while True:
                last = await store.last_seq(run_stream(run_id))
                _, run = await self.request("GET", f"/v1/runs/{run_id}", expect=200)
                if run["status"] in wanted:
                    return dict(run)
                events = store.subscribe(run_stream(run_id), last)
                try:
                    await anext(events)
                finally:
                    await events.aclose()


MakeApi = Callable[..., Awaitable[Api]]


@pytest.fixture
def make_api(aiohttp_client: Any, make_app: Callable[..., web.Application]) -> MakeApi:
    """``await make_api(env=..., **config)``: a client on a fresh app with that config."""

    async def make(**overrides: Any) -> Api:
        client = await aiohttp_client(make_app(**overrides))
        return AgentApi(client, ADMIN_KEY)

    return make


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def anthropic_api(fake: FakeAnthropic, make_api: MakeApi) -> Api:
    """The app with one route, ``fake`` (the default), on the real SDK against the fake."""
    return await make_api(routes=[anthropic_route(fake.url)], env=FAKE_ENV)


@pytest.fixture
def personas_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "personas"
    directory.mkdir()
    return directory


def write_persona(directory: Path, key: str, version: int, **fields: Any) -> Path:
    """A persona TOML file (values written as JSON, which TOML accepts for these types)."""
    body = {
        "key": key,
        "version": version,
        "system_prompt": f"You are {key} v{version}.",
        **fields,
    }
    lines = [f"{name} = {json.dumps(value)}" for name, value in body.items()]
    path = directory / f"{key}@{version}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def events_of(api: Api, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """``(type, data)`` of every event of the run, from the log."""
    return [(e.type, json.loads(e.data)) for e in await read_run(api.runtime.store, run_id)]


async def wait_for_event(
    api: Api, run_id: str, event_type: str, timeout: float = 5.0
) -> dict[str, Any]:
    """Await the first event of ``event_type`` in the run's log (catch-up, then live)."""
    events = api.runtime.store.subscribe(run_stream(run_id), 0)
    try:
        async with asyncio.timeout(timeout):
            async for event in events:
                if event.type == event_type:
                    data: dict[str, Any] = json.loads(event.data)
                    return data
    finally:
        await events.aclose()
    raise AssertionError(f"the run's stream ended without {event_type}")


def types_of(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [t for t, _ in events]


def only(events: list[tuple[str, dict[str, Any]]], event_type: str) -> list[dict[str, Any]]:
    return [d for t, d in events if t == event_type]
