"""What SQLite alone costs per end-to-end run: the floor under the server's CPU per run.

    .venv/bin/python bench/sqlfloor.py [--clients 20] [--seconds 6] [--replays 5]

method
    The server under test is ``runlog serve`` on a fresh SQLite file, as in ``bench/e2e.py``,
    but run inside this file with every ``sqlite3`` connection it opens (its log writer's, the
    aiosqlite reader's, the inline readers') made by a subclass that records each ``execute``
    and ``executemany`` (statement, parameters, connection) in order, transactions and
    PRAGMAs included. ``bench/e2e.py``'s client drives it (C clients, each: thread → message
    → run → follow the SSE to ``run.completed``); SIGUSR1 and SIGUSR2 mark the measured
    window in the recording. On SIGTERM the server writes the recording.

    The recording is then replayed into a fresh file, in one thread of this process: the
    same statements with the same parameters on as many connections as the server opened,
    each SELECT's rows fetched, each ``COMMIT`` synced as the server's were (the recorded
    ``PRAGMA synchronous``). The replay's CPU time in the window (``time.thread_time``,
    user and system, the syncs' system time included) divided by the window's runs is what
    the SQL work of a run costs with nothing of the server around it: no HTTP, no event
    loop, no domain code. Each replay is on a fresh file; the table gives their median.

reference (the same run)
    The null server of ``bench/e2e.py`` (the same client against canned bodies: what HTTP
    alone costs a run on this machine), measured right after the recording window. The
    floor of any server that answers these requests over aiohttp and keeps this log and
    these read models in SQLite is, at the least, the null server's CPU per run plus the
    replay's.

What it leaves out: the ``-wal`` file's touch after each commit (not SQL), the server's
hashing of the log's chain, and the cost of reading rows into Python objects beyond
``fetchall`` (the replay builds the same tuples).

API (called by ``bench/all.py``)
    ``async def measure(clients=20, seconds=6.0, replays=5) -> dict[str, Any]`` returns
    ``sql_ms``, ``writer_ms``, ``readers_ms``, ``null_ms``, ``floor_ms`` and ``server_ms``
    (ms of CPU per run), ``runs``, ``statements_per_run``, ``commits_per_run`` and
    ``replays_ms``.

The last line is machine-readable: ``RESULT sql_ms_per_run=... null_ms_per_run=...
floor_ms_per_run=... server_ms_per_run=...`` (the last is the recording server's CPU per
run, recording included, so it over-states the server's).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import pickle
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from e2e import KEY, load
from e2e import THIS as E2E
from sse import subprocess_server

THIS = Path(__file__).resolve()
ROOT = THIS.parent.parent
TARGET_MS = 1.5
WARMUP_SECONDS = 1.0

Record = tuple[Any, ...]
#: Statements that write: the connection that issues them is the log writer's.
_WRITES = ("INSERT", "UPDATE", "DELETE", "COMMIT")


# -- the recording server -----------------------------------------------------------------


def serve_recording(out: str, argv: list[str]) -> int:
    """``runlog`` with ``argv``, every sqlite3 statement recorded; written to ``out`` at exit."""
    sys.path.insert(0, str(ROOT))
    records: list[Record] = []
    numbers = itertools.count(1)
    connect = sqlite3.connect

    class Recording(sqlite3.Connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.number = next(numbers)
            options = {k: v for k, v in kwargs.items() if k != "factory"}
            records.append(("connect", self.number, args, options))

        def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
            if not isinstance(parameters, (tuple, dict)):
                parameters = tuple(parameters)
            records.append(("execute", self.number, sql, parameters))
            return super().execute(sql, parameters)

        def executemany(self, sql: str, rows: Any, /) -> sqlite3.Cursor:
            rows = [tuple(row) for row in rows]
            records.append(("executemany", self.number, sql, rows))
            return super().executemany(sql, rows)

        def close(self) -> None:
            records.append(("close", self.number))
            super().close()

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs["factory"] = Recording
        return connect(*args, **kwargs)

    sqlite3.connect = recording_connect  # type: ignore[assignment]
    signal.signal(signal.SIGUSR1, lambda *_: records.append(("mark", "start")))
    signal.signal(signal.SIGUSR2, lambda *_: records.append(("mark", "end")))
    from runs.cli import main as runlog

    try:
        return runlog(argv)
    finally:
        with open(out, "wb") as f:
            pickle.dump(records, f, protocol=pickle.HIGHEST_PROTOCOL)


# -- the replay ---------------------------------------------------------------------------


def replay(records: list[Record], recorded_db: str, db: str) -> dict[str, float]:
    """Replay ``records`` into ``db`` (the recording's file names mapped to it); the CPU
    seconds of the marked window, in all and by the connection that spent them."""
    # What each statement is, worked out before the replay: only SQLite's work is in the window.
    kinds = {r[2]: r[2].lstrip().upper() for r in records if r[0] in ("execute", "executemany")}
    writes = {sql for sql, upper in kinds.items() if upper.startswith(_WRITES)}
    commit = {sql for sql, upper in kinds.items() if upper.rstrip() == "COMMIT"}
    connections: dict[int, sqlite3.Connection] = {}
    writers: set[int] = set()
    by_connection: dict[int, float] = {}
    commits = statements = 0
    measuring = False
    window_start = 0.0
    clock = time.thread_time
    for record in records:
        kind = record[0]
        if kind == "mark":
            if record[1] == "start":
                measuring, window_start = True, clock()
            else:
                measuring = False
                window = clock() - window_start
            continue
        number = record[1]
        if kind == "connect":
            args, kwargs = list(record[2]), dict(record[3])
            args[0] = str(args[0]).replace(recorded_db, db)
            kwargs["check_same_thread"] = False
            connections[number] = sqlite3.connect(*args, **kwargs)
            continue
        conn = connections[number]
        if kind == "close":
            conn.close()
            continue
        sql = record[2]
        started = clock()
        if kind == "execute":
            conn.execute(sql, record[3]).fetchall()
        else:
            conn.executemany(sql, record[3])
        if measuring:
            by_connection[number] = by_connection.get(number, 0.0) + clock() - started
            statements += 1
            if sql in writes:
                writers.add(number)
            if sql in commit:
                commits += 1
    for conn in connections.values():
        conn.close()
    with sqlite3.connect(recorded_db) as recorded, sqlite3.connect(db) as replayed:
        count = "SELECT count(*), max(hash) FROM events"
        if recorded.execute(count).fetchone() != replayed.execute(count).fetchone():
            raise AssertionError("the replay did not write the log the server wrote")
    writer = sum(seconds for number, seconds in by_connection.items() if number in writers)
    return {
        "window": window,
        "writer": writer,
        "readers": sum(by_connection.values()) - writer,
        "commits": commits,
        "statements": statements,
    }


# -- the measurement ----------------------------------------------------------------------


async def record(tmp: Path, clients: int, seconds: float) -> dict[str, Any]:
    """Drive the recording server, then the null server; the recording and the figures."""
    db = tmp / "floor.db"
    config = tmp / "floor.toml"
    config.write_text(f"max_live_runs_per_org = {max(100, 2 * clients)}\n")
    out = tmp / "records.pickle"
    argv = [sys.executable, str(THIS), "--record-server", str(out)]
    argv += ["serve", "--db", str(db), "--config", str(config)]
    async with subprocess_server(argv, tmp / "server.log", key=KEY, stop_timeout=120) as (
        base,
        pid,
    ):
        warm, _, _ = await load(base, clients, WARMUP_SECONDS, pid)
        os.kill(pid, signal.SIGUSR1)
        samples, _, cpu = await load(base, clients, seconds, pid)
        os.kill(pid, signal.SIGUSR2)
        bodies = tmp / "bodies.json"
        bodies.write_text(json.dumps(warm.bodies))
        null_argv = [sys.executable, str(E2E), "--null-server", str(bodies)]
        async with subprocess_server(null_argv, tmp / "null.log", key=KEY) as (null_base, null_pid):
            await load(null_base, clients, WARMUP_SECONDS, null_pid)
            null, _, null_cpu = await load(null_base, clients, seconds, null_pid)
    # The server wrote it as it exited, and subprocess_server waited for that.
    with out.open("rb") as f:
        records = pickle.load(f)
    return {
        "records": records,
        "db": str(db),
        "runs": samples.runs,
        "server_ms": 1000 * cpu / samples.runs,
        "null_ms": 1000 * null_cpu / null.runs,
    }


async def measure(clients: int = 20, seconds: float = 6.0, replays: int = 5) -> dict[str, Any]:
    """Record ``seconds`` of ``clients`` clients, measure the null server, replay ``replays``
    times; the figures in ms of CPU per run (medians of the replays) and the counts."""
    with tempfile.TemporaryDirectory(prefix="runlog-bench-sqlfloor-") as tmp_dir:
        tmp = Path(tmp_dir)
        got = await record(tmp, clients, seconds)
        done = [
            replay(got["records"], got["db"], str(tmp / f"replay-{i}.db")) for i in range(replays)
        ]
    runs = got["runs"]

    def per_run(key: str) -> float:
        return statistics.median(r[key] for r in done) * 1000 / runs

    sql = per_run("window")
    return {
        "clients": clients,
        "runs": runs,
        "statements_per_run": done[0]["statements"] / runs,
        "commits_per_run": done[0]["commits"] / runs,
        "replays_ms": [r["window"] * 1000 / runs for r in done],
        "server_ms": got["server_ms"],
        "null_ms": got["null_ms"],
        "sql_ms": sql,
        "writer_ms": per_run("writer"),
        "readers_ms": per_run("readers"),
        "floor_ms": got["null_ms"] + sql,
    }


async def main(args: argparse.Namespace) -> None:
    got = await measure(args.clients, args.seconds, args.replays)
    print(
        f"{args.clients} clients, {got['runs']} runs in the window; per run: "
        f"{got['statements_per_run']:.1f} statements, {got['commits_per_run']:.2f} commits;"
        f" {args.replays} replays (SQL ms/run: "
        + ", ".join(f"{ms:.3f}" for ms in got["replays_ms"])
        + ")"
    )
    rows = [
        ("server CPU per run (recording it)", got["server_ms"]),
        ("null server CPU per run (HTTP alone)", got["null_ms"]),
        ("SQL replay per run", got["sql_ms"]),
        ("  of it, the log writer's connection", got["writer_ms"]),
        ("  of it, the readers' connections", got["readers_ms"]),
        ("floor: null server + SQL replay", got["floor_ms"]),
        ("target", TARGET_MS),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'figure':<{width}}  ms/run  of the null server's")
    for name, value in rows:
        print(f"{name:<{width}}  {value:6.3f}  {value / got['null_ms']:5.2f}")
    print(
        f"RESULT sql_ms_per_run={got['sql_ms']:.3f} null_ms_per_run={got['null_ms']:.3f}"
        f" floor_ms_per_run={got['floor_ms']:.3f} server_ms_per_run={got['server_ms']:.3f}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--seconds", type=float, default=6.0, help="recorded seconds")
    parser.add_argument("--replays", type=int, default=5, help="replays into fresh files")
    return parser.parse_args()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--record-server"]:
        raise SystemExit(serve_recording(sys.argv[2], sys.argv[3:]))
    asyncio.run(main(parse_args()))
