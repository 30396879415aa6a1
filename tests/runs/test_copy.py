"""``runlog copy`` moves a whole log between backends unchanged: SQLite → PostgreSQL → SQLite
gives identical exports, the same head, and projections equal to the source's."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from pathlib import Path

from eventstore import connect_database
from projections import all_projections, table_rows
from runs.auth import key_sha256
from tests.conftest import ADMIN_KEY, Api
from tests.durability.test_audit import runlog as audit_runlog
from tests.postgres import fresh_schema

ROOT = Path(__file__).resolve().parents[2]
HEAD = re.compile(r"head position (\d+) hash ([0-9a-f]{64})")


def runlog(*args: str) -> subprocess.CompletedProcess[str]:
    return audit_runlog(*args, timeout=120)  # a copy of a whole log takes longer


async def varied_log(api: Api) -> str:
    """A log with runs that end every way; returns the admin's org id."""
    _, done = await api.start_run('/tool calculator {"expression": "6*7"}\n/cache 3')
    await api.wait_for(done)
    _, failed = await api.start_run("/fail")
    await api.wait_for(failed)
    _, waiting = await api.start_run("/ask still there?")
    await api.wait_for(waiting, {"waiting_for_input"})
    _, cancelled = await api.start_run("/slow 200\nnever finished")
    await api.request("POST", f"/v1/runs/{cancelled}:cancel", expect=200)
    admin = await api.runtime.queries.api_key_by_hash(key_sha256(ADMIN_KEY))
    assert admin is not None
    return str(admin["org_id"])


def copy(source: str, target: str) -> tuple[int, str]:
    result = runlog("copy", "--from", source, "--to", target)
    assert result.returncode == 0, (result.stdout, result.stderr)
    match = HEAD.search(result.stdout)
    assert match, result.stdout
    return int(match.group(1)), match.group(2)


def verified_head(location: str) -> tuple[int, str]:
    result = runlog("verify", "--db", location)
    assert result.returncode == 0, (result.stdout, result.stderr)
    match = re.search(
        r"positions 1\.\.(\d+) gapless, hash chain intact \(head ([0-9a-f]{64})\)", result.stdout
    )
    assert match, result.stdout
    return int(match.group(1)), match.group(2)


def export(location: str, org_id: str) -> str:
    result = runlog("export", "--db", location, "--org", org_id)
    assert result.returncode == 0, result.stderr
    return result.stdout


def projection_rows(location: str) -> dict[str, list[tuple[object, ...]]]:
    db = connect_database(location)
    try:
        return {t: table_rows(db, t) for p in all_projections() for t in p.tables}
    finally:
        db.close()


async def test_round_trip_sqlite_postgres_sqlite_changes_nothing(
    api: Api, db_path: str, pg_url: str, tmp_path: Path
) -> None:
    org_id = await varied_log(api)
    await api.runtime.store.close()  # a quiet source, so its head is final
    pg = fresh_schema(pg_url)
    back = str(tmp_path / "back.db")

    source_head = verified_head(db_path)
    assert copy(db_path, pg) == source_head
    assert verified_head(pg) == source_head
    assert copy(pg, back) == source_head
    assert verified_head(back) == source_head

    exported = export(db_path, org_id)
    assert exported.count("\n") > 20
    assert export(pg, org_id) == exported
    assert export(back, org_id) == exported
    # The targets' projections were rebuilt: equal to the live ones of the source.
    rows = projection_rows(db_path)
    assert rows["runs"]
    assert projection_rows(pg) == rows
    assert projection_rows(back) == rows
    for target in (pg, back):
        check = runlog("rebuild", "--db", target, "--check")
        assert check.returncode == 0, check.stdout


async def test_copy_refuses_a_target_that_holds_a_log(api: Api, db_path: str, pg_url: str) -> None:
    await varied_log(api)
    pg = fresh_schema(pg_url)
    head = copy(db_path, pg)
    again = runlog("copy", "--from", db_path, "--to", pg)
    assert again.returncode == 1
    assert "not empty" in again.stderr or "already holds a log" in again.stderr, again.stderr
    assert verified_head(pg) == head


async def test_copy_refuses_a_source_that_fails_verification(
    api: Api, db_path: str, pg_url: str
) -> None:
    await varied_log(api)
    await api.runtime.store.close()
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("UPDATE events SET data = replace(data, '42', '43') WHERE type = 'tool.result'")
    conn.commit()
    conn.close()
    pg = fresh_schema(pg_url)

    result = runlog("copy", "--from", db_path, "--to", pg)

    assert result.returncode == 1
    assert "fails verification at position" in result.stderr
    db = connect_database(pg)
    try:
        assert db.fetch_one("SELECT count(*) FROM events") == (0,)
    finally:
        db.close()


async def test_copy_from_a_missing_log_is_refused(tmp_path: Path, pg_url: str) -> None:
    result = runlog("copy", "--from", str(tmp_path / "none.db"), "--to", fresh_schema(pg_url))
    assert result.returncode == 2
    assert "no log at" in result.stderr
