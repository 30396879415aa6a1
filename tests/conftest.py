"""Fixtures shared by the whole suite: real apps on real SQLite files (WAL)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from runs.config import load_config
from server import RUNTIME, Runtime, create_app
from tests.postgres import fresh_schema, session_database

ADMIN_KEY = "rl_test_admin_key_0123456789abcdefghijklmnop"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (soak, long fuzz, load) run only with RUNLOG_SLOW_TESTS=1."""
    if os.environ.get("RUNLOG_SLOW_TESTS") == "1":
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


class Api:
    """A thin helper over the aiohttp test client, authenticated with one key."""

    def __init__(self, client: TestClient, key: str) -> None:
        self.client = client
        self.key = key

    @property
    def runtime(self) -> Runtime:
        return self.client.app[RUNTIME]  # type: ignore[index]

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}", **extra}

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        key: str | None = None,
        expect: int | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any]:
        headers = kwargs.pop("headers", None) or self.headers(key)
        async with self.client.request(method, path, json=json, headers=headers, **kwargs) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            if expect is not None:
                assert r.status == expect, (r.status, body)
            return r.status, body

    async def create_thread(self, title: str | None = "t", key: str | None = None) -> str:
        _, body = await self.request(
            "POST", "/v1/threads", json={"title": title}, key=key, expect=201
        )
        return str(body["id"])

    async def add_message(self, thread_id: str, content: str, key: str | None = None) -> str:
        _, body = await self.request(
            "POST",
            f"/v1/threads/{thread_id}/messages",
            json={"content": content},
            key=key,
            expect=201,
        )
        return str(body["id"])

    async def create_run(self, thread_id: str, key: str | None = None, **body: Any) -> str:
        _, created = await self.request(
            "POST", f"/v1/threads/{thread_id}/runs", json=body, key=key, expect=201
        )
        return str(created["run_id"])

    async def start_run(self, content: str, **body: Any) -> tuple[str, str]:
        """A new thread with one message and a run on it: ``(thread_id, run_id)``."""
        thread_id = await self.create_thread()
        await self.add_message(thread_id, content)
        return thread_id, await self.create_run(thread_id, **body)

    async def wait_for(
        self,
        run_id: str,
        statuses: set[str] | None = None,
        timeout: float = 10.0,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Await the run reaching one of ``statuses`` (default: any terminal one)."""
        wanted = statuses or {"completed", "failed", "cancelled"}
        store = self.runtime.store
        async with asyncio.timeout(timeout):
            while True:
                # The cursor is read before the status, so an event appended in between
                # still wakes the wait below (projections commit with their events).
                last = await store.last_seq(f"run-{run_id}")
                _, run = await self.request("GET", f"/v1/runs/{run_id}", key=key, expect=200)
                if run["status"] in wanted:
                    return dict(run)
                # Wait for the run's next event instead of sleeping.
                events = store.subscribe(f"run-{run_id}", last)
                try:
                    await anext(events)
                finally:
                    await events.aclose()

    async def new_org_key(self, name: str = "other") -> str:
        """A key of a fresh second org (for cross-org checks)."""
        accounts = self.runtime.accounts
        org_id = await accounts.create_org(name)
        user_id = await accounts.create_user(org_id, f"{name}-user", f"{name}@example.com")
        _, key = await accounts.create_key(user_id)
        return key


def spy_on(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    """Replace ``owner.name`` (a function of one argument) with one that records each
    argument and calls the original; returns the list of arguments."""
    calls: list[Any] = []
    real = getattr(owner, name)

    def recording(argument: Any) -> Any:
        calls.append(argument)
        return real(argument)

    monkeypatch.setattr(owner, name, recording)
    return calls


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "runlog.db")


def app_factory(db: str) -> Callable[..., web.Application]:
    """``make(env=None, **config overrides)``: the real app on the log at ``db``."""

    def make(env: dict[str, str] | None = None, **overrides: Any) -> web.Application:
        settings = {"db": db, "delta_coalesce_ms": 0, "secret_key": "test-secret"}
        settings.update(overrides)
        tools = settings.pop("tools", ())
        provider_for = settings.pop("provider_for", None)
        config = load_config(None, env={}, overrides=settings)
        environment = {"RUNLOG_BOOTSTRAP_API_KEY": ADMIN_KEY, **(env or {})}
        return create_app(config, env=environment, tools=tools, provider_for=provider_for)

    return make


@pytest.fixture
def make_app(db_path: str) -> Callable[..., web.Application]:
    return app_factory(db_path)


@pytest.fixture
async def api(aiohttp_client: Any, make_app: Callable[..., web.Application]) -> Api:
    client = await aiohttp_client(make_app())
    return Api(client, ADMIN_KEY)


@pytest.fixture(scope="session")
def pg_url() -> Any:
    """A fresh PostgreSQL database for this test session (dropped at its end)."""
    yield from session_database()


@pytest.fixture(params=["sqlite", "postgres"])
def db_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh log on each backend in turn: a SQLite file, or a PostgreSQL schema of its own in
    the session's database."""
    if request.param == "sqlite":
        return str(tmp_path / "runlog.db")
    return fresh_schema(request.getfixturevalue("pg_url"))


@pytest.fixture
async def api_on_both(aiohttp_client: Any, db_location: str) -> Api:
    """:class:`Api` on the real app, once per backend."""
    client = await aiohttp_client(app_factory(db_location)())
    return Api(client, ADMIN_KEY)
