"""The admin commands and serve's start-up against a ``postgresql://`` URL."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from runs.config import ConfigError, load_config
from runs.startup import load_secret
from tests.conftest import ADMIN_KEY, Api, app_factory
from tests.postgres import fresh_schema
from tests.runs.test_cli_admin import admin, run_cli


async def test_admin_commands_on_a_url_while_the_server_runs(
    aiohttp_client: Any, pg_url: str
) -> None:
    url = fresh_schema(pg_url)
    api = Api(await aiohttp_client(app_factory(url)()), ADMIN_KEY)
    org_id = (await admin(url, "create-org", "--name", "acme")).strip()
    user_id = (
        await admin(url, "create-user", "--org", org_id, "--name", "ann", "--email", "a@x.io")
    ).strip()
    key = (await admin(url, "create-key", "--user", user_id)).strip()

    # The server (another process's appends) sees the key at once.
    thread_id = await api.create_thread("acme's", key=key)
    _, thread = await api.request("GET", f"/v1/threads/{thread_id}", key=key, expect=200)
    assert thread["org_id"] == org_id
    listed = await admin(url, "list-keys", "--org", org_id)
    assert "user=ann" in listed
    assert "active" in listed


def test_a_postgresql_log_needs_a_configured_token_secret() -> None:
    url = "postgresql://postgres@127.0.0.1:5432/runlog"
    with pytest.raises(ConfigError, match="RUNLOG_SECRET_KEY"):
        load_secret(load_config(None, env={}, overrides={"db": url}))
    configured = load_config(None, env={"RUNLOG_SECRET_KEY": "s3cret"}, overrides={"db": url})
    assert load_secret(configured) == b"s3cret"


async def test_head_and_verify_expect_on_a_url(aiohttp_client: Any, pg_url: str) -> None:
    url = fresh_schema(pg_url)
    api = Api(await aiohttp_client(app_factory(url)()), ADMIN_KEY)
    await api.create_thread("one")
    await api.create_thread("two")
    code, out, err = await run_cli("head", "--db", url)
    assert code == 0, err
    position, hash_ = out.split()
    with psycopg.connect(url) as conn:
        last = conn.execute("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
        assert last.fetchone() == (int(position), hash_)
    code, out, err = await run_cli("verify", "--db", url, "--expect", f"{position}:{hash_}")
    assert code == 0, (out, err)
    assert "holds all 1 anchors" in out
    code, out, _ = await run_cli("verify", "--db", url, "--expect", f"{position}:{'0' * 64}")
    assert code == 1
    assert f"ANCHOR FAILED at position {position}:" in out
