"""The admin commands and serve's start-up against a ``postgresql://`` URL."""

from __future__ import annotations

from typing import Any

import pytest

from runs.config import ConfigError, load_config
from runs.startup import load_secret
from tests.conftest import ADMIN_KEY, Api, app_factory
from tests.postgres import fresh_schema
from tests.runs.test_cli_admin import admin


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
