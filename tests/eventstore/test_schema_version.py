"""The schema version is recorded in the database on both backends; a runlog refuses a database
written by a newer one, and readyz turns 503 when the versions differ."""

from __future__ import annotations

from typing import Any

import pytest

from eventstore import (
    SCHEMA_VERSION,
    SchemaVersionError,
    connect_database,
    open_event_store,
)
from tests.conftest import ADMIN_KEY, Api, app_factory


def set_version(location: str, version: int) -> None:
    db = connect_database(location)
    try:
        db.execute("UPDATE runlog_schema SET version = ? WHERE id = 1", (version,))
    finally:
        db.close()


async def test_the_version_is_recorded(db_location: str) -> None:
    store = await open_event_store(db_location)
    await store.close()
    db = connect_database(db_location)
    try:
        assert db.fetch_all("SELECT id, version FROM runlog_schema") == [(1, SCHEMA_VERSION)]
    finally:
        db.close()
    assert SCHEMA_VERSION == 1


async def test_a_newer_schema_is_refused_with_a_clear_message(db_location: str) -> None:
    store = await open_event_store(db_location)
    await store.close()
    set_version(db_location, SCHEMA_VERSION + 1)
    with pytest.raises(SchemaVersionError) as caught:
        await open_event_store(db_location)
    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert "upgrade runlog" in message


async def test_readyz_is_503_when_the_database_version_differs(
    aiohttp_client: Any, db_location: str
) -> None:
    api = Api(await aiohttp_client(app_factory(db_location)()), ADMIN_KEY)
    status, body = await api.request("GET", "/readyz")
    assert (status, body["status"]) == (200, "ready")
    # Another process, a newer runlog, upgraded the database under this one.
    set_version(db_location, SCHEMA_VERSION + 1)
    status, body = await api.request("GET", "/readyz")
    assert (status, body["status"]) == (503, "not_ready")
    assert f"schema version {SCHEMA_VERSION + 1}" in body["reason"]


async def test_the_cli_refuses_a_newer_schema_with_the_message(db_location: str) -> None:
    import subprocess
    import sys

    store = await open_event_store(db_location)
    await store.close()
    set_version(db_location, SCHEMA_VERSION + 1)
    result = subprocess.run(
        [sys.executable, "-m", "runs", "admin", "--db", db_location, "list-keys"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "newer runlog" in result.stderr
    assert "Traceback" not in result.stderr
