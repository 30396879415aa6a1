"""The auditor's tools on a real log, on both backends (a SQLite file, a PostgreSQL URL): verify
(and tampering), rebuild --check, export, point-in-time state."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eventstore import canonical_bytes, connect_database
from runs.run import fold_recorded
from tests.conftest import Api

ROOT = Path(__file__).resolve().parents[2]


def runlog(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", "runs", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        # A command that waits on PostgreSQL: say who holds what it waits for.
        urls = [a for a in args if a.startswith("postgresql://")]
        raise AssertionError(f"{exc}\n{_sessions(urls[0]) if urls else ''}") from exc


def _sessions(url: str) -> str:
    """The database's sessions, what each waits for and holds (for a command that hung)."""
    conn = connect_database(url)
    try:
        rows = conn.fetch_all(
            "SELECT a.pid, a.state, a.wait_event_type, a.wait_event, a.xact_start,"
            " left(a.query, 100), (SELECT string_agg(l.locktype || ':' || l.mode"
            " || CASE WHEN l.granted THEN '' ELSE '(waiting)' END, ', ')"
            " FROM pg_locks l WHERE l.pid = a.pid)"
            " FROM pg_stat_activity a WHERE a.datname = current_database()"
        )
    finally:
        conn.close()
    return "\n".join(repr(row) for row in rows)


async def _varied_log(api: Api) -> tuple[str, str]:
    thread_id, run_id = await api.start_run('/tool calculator {"expression": "6*7"}')
    await api.wait_for(run_id)
    _, failed = await api.start_run("/fail")
    await api.wait_for(failed)
    return thread_id, run_id


def _tamper(db: str, *statements: str) -> None:
    """What an attacker with the database owner's rights could do: lift the guards, edit."""
    conn = connect_database(db)
    try:
        if conn.dialect == "sqlite":
            conn.execute("DROP TRIGGER events_append_only_update")
            conn.execute("DROP TRIGGER events_append_only_delete")
        else:
            conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


async def test_as_of_seq_at_every_seq_equals_the_fold_of_the_first_n_events(
    api_on_both: Api,
) -> None:
    api = api_on_both
    _, run_id = await _varied_log(api)
    events = await api.runtime.store.read_stream(f"run-{run_id}", 0, 1000)
    assert len(events) > 5
    for n in range(1, len(events) + 1):
        _, run = await api.request("GET", f"/v1/runs/{run_id}?as_of_seq={n}", expect=200)
        state = fold_recorded(events[:n])
        assert state is not None
        assert run["as_of_seq"] == n
        assert run["status"] == state.status
        assert run["total_input_tokens"] == state.total_input_tokens
        assert run["total_output_tokens"] == state.total_output_tokens
        assert run["completed_at"] == state.completed_at
        assert run["duration_ms"] == state.duration_ms
    _, final = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
    _, last = await api.request("GET", f"/v1/runs/{run_id}?as_of_seq={len(events)}", expect=200)
    assert {k: v for k, v in last.items() if k != "as_of_seq"} == {
        k: v for k, v in final.items() if k != "as_of_seq"
    }
    for bad in (str(len(events) + 1), "0", "-1", "x", "1.5", "9" * 30):
        status, body = await api.request("GET", f"/v1/runs/{run_id}?as_of_seq={bad}")
        assert status == 400, bad
        assert body["code"] == "validation.as_of_seq"


async def test_export_lines_reverify_offline(api_on_both: Api) -> None:
    api = api_on_both
    db_path = api.runtime.config.db
    thread_id, run_id = await _varied_log(api)
    for selector in (["--run", run_id], ["--thread", thread_id]):
        result = runlog("export", "--db", db_path, *selector)
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert lines
        assert {line["stream"] for line in lines} >= {f"run-{run_id}"}
        for line in lines:
            data = json.dumps(line["data"], separators=(",", ":"), ensure_ascii=False)
            canonical = canonical_bytes(
                line["position"],
                line["stream"],
                line["seq"],
                line["type"],
                data,
                line["created_at"],
            )
            digest = hashlib.sha256(bytes.fromhex(line["prev_hash"]) + canonical).hexdigest()
            assert digest == line["hash"]
    org = runlog("export", "--db", db_path, "--org", api.runtime.routes.default_id)
    assert org.returncode == 0
    assert org.stdout == ""  # no such org: nothing, not an error


async def test_verify_and_rebuild_check_pass_on_an_intact_log(api_on_both: Api) -> None:
    api = api_on_both
    db_path = api.runtime.config.db
    await _varied_log(api)
    verify = runlog("verify", "--db", db_path)
    assert verify.returncode == 0
    assert verify.stdout.startswith("ok: ")
    check = runlog("rebuild", "--db", db_path, "--check")
    assert check.returncode == 0, check.stdout
    rebuilt = runlog("rebuild", "--db", db_path)
    assert rebuilt.returncode == 0
    assert runlog("rebuild", "--db", db_path, "--check").returncode == 0


@pytest.mark.parametrize(
    ("tamper", "position"),
    [
        ("UPDATE events SET data = replace(data, '42', '43') WHERE position = {p}", "p"),
        ("DELETE FROM events WHERE position = {p}", "p"),
        (
            "UPDATE events SET data = (SELECT data FROM events WHERE position = {p} + 1),"
            " type = (SELECT type FROM events WHERE position = {p} + 1) WHERE position = {p}",
            "p",
        ),
    ],
    ids=["flipped-byte", "deleted-row", "reordered-pair"],
)
async def test_verify_names_the_first_tampered_position(
    api_on_both: Api, tamper: str, position: str
) -> None:
    api = api_on_both
    db_path = api.runtime.config.db
    _, run_id = await _varied_log(api)
    conn = connect_database(db_path)
    row = conn.fetch_one(
        "SELECT position FROM events WHERE stream = ? AND type = 'tool.result'",
        (f"run-{run_id}",),
    )
    conn.close()
    assert row is not None
    target = row[0]
    _tamper(db_path, tamper.format(p=target))
    result = runlog("verify", "--db", db_path)
    assert result.returncode == 1, result.stdout
    assert f"FAILED at position {target}:" in result.stdout


@pytest.mark.parametrize(
    ("table", "drift"),
    [
        ("runs", "UPDATE runs SET total_output_tokens = total_output_tokens + 1"),
        ("usage", "UPDATE usage SET credits_used = credits_used + 1"),
    ],
)
async def test_rebuild_check_reports_a_projection_that_drifted(
    api_on_both: Api, table: str, drift: str
) -> None:
    api = api_on_both
    db_path = api.runtime.config.db
    await _varied_log(api)
    conn = connect_database(db_path)
    conn.execute(drift)
    conn.close()
    result = runlog("rebuild", "--db", db_path, "--check")
    assert result.returncode == 1
    assert f"DIFFERS {table}" in result.stdout
    assert runlog("rebuild", "--db", db_path).returncode == 0
    assert runlog("rebuild", "--db", db_path, "--check").returncode == 0
    if db_path.startswith("postgresql://"):
        # The check's scratch schema is gone again.
        conn = connect_database(db_path)
        try:
            scratch = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'runlog_scratch_%'"
            assert conn.fetch_all(scratch) == []
        finally:
            conn.close()
