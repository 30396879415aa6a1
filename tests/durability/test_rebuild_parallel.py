"""``runlog rebuild`` on two processes (SQLite, ``--jobs 2``): a forked helper replays part of
the projections (projections/parallel.py). The tables it leaves must be the very rows a
rebuild by one process leaves, a drift in either process's tables must be found by
``--check``, and an event either process cannot apply must stop the rebuild with nothing
changed."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from eventstore import connect_database
from eventstore.sql import SqliteDatabase
from projections import all_projections, rebuild_in_place, table_rows
from projections.parallel import HelperFailed, ReplayHelper, helper_for, split
from tests.conftest import Api
from tests.durability.test_audit import runlog
from tests.http.test_projections_rebuild import build_varied_log


def every_table(db_path: str) -> dict[str, list[tuple[Any, ...]]]:
    db = connect_database(db_path, read_only=True)
    try:
        return {
            table: table_rows(db, table)
            for projection in all_projections()
            for table in projection.tables
        }
    finally:
        db.close()


def empty_log(folder: Path) -> str:
    log = str(folder / "log.db")
    db = connect_database(log)
    db.begin_schema()
    db.create_log_schema()
    db.commit()
    db.close()
    return log


async def varied_log(api: Api) -> str:
    """Runs that touch the tables of both halves: threads and messages, runs with a tool
    call, usage, a failure, a cancelled run. The store is closed after (a file the commands
    read as it is); returns the log's path."""
    _, run_id = await api.start_run('/tool calculator {"expression": "6*7"}')
    await api.wait_for(run_id)
    _, failed = await api.start_run("/fail")
    await api.wait_for(failed)
    thread_id, slow = await api.start_run("/slow 200\nnever finished")
    await api.request("POST", f"/v1/runs/{slow}/cancel", expect=200)
    await api.wait_for(slow)
    await api.add_message(thread_id, "one more")
    await api.runtime.store.close()
    return api.runtime.config.db


def test_the_projections_split_into_two_halves_that_read_nothing_of_each_other() -> None:
    projections = all_projections()
    halves = split(projections)
    assert halves is not None
    mine, theirs = halves
    assert mine and theirs
    names = [p.name for p in projections]
    assert sorted(p.name for p in mine + theirs) == sorted(names)
    for half in (mine, theirs):
        inside = {p.name for p in half}
        assert [p.name for p in half] == [n for n in names if n in inside]  # order kept
        for projection in half:
            assert set(projection.reads) <= inside, projection.name
    owners = {index for index, half in enumerate(halves) for p in half for t in p.tables}
    assert owners == {0, 1}
    drifted = {
        index
        for table, _ in DRIFTS
        for index, half in enumerate(halves)
        if any(table in p.tables for p in half)
    }
    assert drifted == {0, 1}
    # webhooks reads the runs table: they go together.
    assert {"runs", "webhooks"} <= {p.name for p in mine} or {"runs", "webhooks"} <= {
        p.name for p in theirs
    }


async def test_two_processes_rebuild_the_rows_one_process_does(api: Api, tmp_path: Path) -> None:
    db_path = api.runtime.config.db
    await build_varied_log(api)  # every projection has rows, webhooks included
    serial, parallel = str(tmp_path / "serial.db"), str(tmp_path / "parallel.db")
    await api.runtime.store.close()  # a consistent file to copy (WAL checkpointed)
    for copy in (serial, parallel):
        shutil.copyfile(db_path, copy)
    one = runlog("rebuild", "--db", serial, "--jobs", "1")
    two = runlog("rebuild", "--db", parallel, "--jobs", "2")
    assert one.returncode == 0, one.stdout + one.stderr
    assert two.returncode == 0, two.stdout + two.stderr
    assert one.stdout.endswith(" events\n")
    assert two.stdout == one.stdout.replace(" events\n", " events (in 2 processes)\n")
    rows = every_table(parallel)
    assert rows == every_table(serial)
    assert all(rows.values()), [table for table, found in rows.items() if not found]
    check = runlog("rebuild", "--db", parallel, "--check", "--jobs", "2")
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("ok: every projection rebuilt from ")
    assert check.stdout.endswith(" equals the live one (in 2 processes)\n")
    serial_check = runlog("rebuild", "--db", parallel, "--check", "--jobs", "1")
    assert serial_check.stdout.endswith(" equals the live one\n")


async def test_the_helper_starts_before_this_process_drops_the_old_tables(
    api: Api, tmp_path: Path
) -> None:
    """The helper reads only the log, so it is given the head before this process drops the
    read models' tables (the helper's half is the longer one: dropping them would delay it)."""
    db_path = await varied_log(api)
    before = every_table(db_path)
    projections = all_projections()
    halves = split(projections)
    assert halves is not None
    seen: list[str] = []
    db = connect_database(db_path)
    assert isinstance(db, SqliteDatabase)
    db.conn.set_trace_callback(seen.append)
    helper = ReplayHelper.fork(db_path, halves[1], str(tmp_path / "helper.db"))
    begin = helper.begin

    def begin_seen(*args: Any) -> Any:
        seen.append("helper started")
        return begin(*args)

    helper.begin = begin_seen  # type: ignore[method-assign]
    try:
        rebuild_in_place(db, projections, helper=helper)
    finally:
        helper.close()
        db.close()
    drops = [i for i, statement in enumerate(seen) if statement.startswith("DROP TABLE")]
    assert drops, seen
    assert seen.index("helper started") < drops[0], seen
    assert every_table(db_path) == before


#: Drifts in tables of both halves (the split test checks that they are).
DRIFTS = [
    ("runs", "UPDATE runs SET total_output_tokens = total_output_tokens + 1"),
    ("usage", "UPDATE usage SET credits_used = credits_used + 1"),
    ("messages", "DELETE FROM messages WHERE role = 'user'"),
]


@pytest.mark.parametrize(("table", "drift"), DRIFTS)
async def test_two_processes_find_and_mend_a_drift_in_either_half(
    api: Api, table: str, drift: str
) -> None:
    db_path = await varied_log(api)
    before = every_table(db_path)
    conn = connect_database(db_path)
    conn.execute(drift)
    conn.close()
    found = runlog("rebuild", "--db", db_path, "--check", "--jobs", "2")
    assert found.returncode == 1, found.stdout + found.stderr
    differs = [line for line in found.stdout.splitlines() if line.startswith("DIFFERS")]
    assert [line.split(":")[0] for line in differs] == [f"DIFFERS {table}"]
    mended = runlog("rebuild", "--db", db_path, "--jobs", "2")
    assert mended.returncode == 0, mended.stdout + mended.stderr
    assert every_table(db_path) == before
    assert runlog("rebuild", "--db", db_path, "--check", "--jobs", "2").returncode == 0


@pytest.mark.parametrize("check", [False, True], ids=["rebuild", "check"])
@pytest.mark.parametrize("half", [0, 1], ids=["this-process", "helper"])
async def test_an_event_either_process_cannot_apply_stops_the_rebuild_with_nothing_changed(
    api: Api, half: int, check: bool
) -> None:
    db_path = await varied_log(api)
    halves = split(all_projections())
    assert halves is not None
    read = [set().union(*(p.event_types for p in projections)) for projections in halves]
    # An event type only that half reads.
    kind = "message.added" if "message.added" in read[half] - read[1 - half] else "run.usage"
    assert kind in read[half] - read[1 - half], (kind, read)
    conn = connect_database(db_path)
    row = conn.fetch_one("SELECT max(position) FROM events WHERE type = ?", (kind,))
    assert row is not None and row[0] is not None
    position = row[0]
    # An attacker's edit (the guards lifted): an event that is not one of its type.
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("UPDATE events SET data = '{\"not\": 1}' WHERE position = ?", (position,))
    conn.close()
    before = every_table(db_path)
    args = ["rebuild", "--db", db_path, "--jobs", "2", *(["--check"] if check else [])]
    result = runlog(*args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"FAILED at position {position}: the event cannot be applied" in result.stdout
    assert every_table(db_path) == before


def test_a_helper_that_fails_or_dies_is_reported(tmp_path: Path) -> None:
    log = empty_log(tmp_path)
    projections = all_projections()
    halves = split(projections)
    assert halves is not None

    # It cannot write its scratch file: its error comes back.
    helper = ReplayHelper.fork(log, halves[1], str(tmp_path / "missing" / "helper.db"))
    try:
        helper.begin(0, projections, None)
        with pytest.raises(HelperFailed, match="unable to open database file"):
            helper.wait()
    finally:
        helper.close()

    # It is killed before it says anything.
    helper = ReplayHelper.fork(log, halves[1], str(tmp_path / "helper.db"))
    try:
        os.kill(helper.pid, signal.SIGKILL)
        with pytest.raises(HelperFailed, match="stopped without a word"):
            helper.wait()
    finally:
        helper.close()


def test_two_processes_by_default_only_on_a_large_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = empty_log(tmp_path)
    projections = all_projections()
    assert helper_for(log, projections, str(tmp_path)) is None  # a small log
    assert helper_for(log, projections, str(tmp_path), jobs=1) is None
    assert helper_for(str(tmp_path / "none.db"), projections, str(tmp_path)) is None
    monkeypatch.setattr("projections.parallel.PARALLEL_FROM_BYTES", os.path.getsize(log))
    for jobs in (None, 2):
        helper = helper_for(log, projections, str(tmp_path), jobs)
        assert helper is not None
        helper.close()
