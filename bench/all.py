"""Every benchmark in one run, one table. A script, not a test: ``python -m bench``.

    .venv/bin/python -m bench [--seconds 10] [--large 1000000]

Each figure is measured against a reference taken in the same run, on the same machine:

- end to end (``bench/e2e.py``, ``measure(clients, seconds)``): 20 clients each doing thread →
  message → run → follow the SSE to the end on the scripted route, against a null aiohttp
  server answering the same requests with canned bodies; the server's CPU per run;
- the floor (``bench/sqlfloor.py``, ``measure(clients, seconds)``): the same load's SQL
  statements replayed alone, plus the null server's CPU per run: the least a server of this
  design could spend on a run (no target; the server's CPU per run is set against it);
- rebuild (``runlog rebuild`` on a copy of the realistic 1,000,000-event log, and ``runlog
  rebuild --check`` on the log itself), each a subprocess timed from outside, with its peak
  RSS; the reference is ``runlog verify`` of the same log;
- queries (``bench/queries.py``): p50 of each list and detail query on a log of 1,000,000
  runs over its p50 on a log of 10,000 runs;
- SSE catch-up over HTTP over a raw read of the same events (``bench/sse.py``,
  ``measure_catchup()``);
- memory: the RSS of a server over the 1,000,000-event log after every query above and 1,000
  idle SSE connections (``bench/queries.py``).

The logs are made once by ``bench/make_log.py`` and kept in ``bench/.cache``; the first run
spends several minutes making them, later runs take under five minutes in all. A benchmark
whose module is missing is a ``missing`` row, never a number; the exit status is 1 when any
figure is missing or misses its target. The last line is machine-readable::

    RESULT e2e_ratio=<x> cpu_ms_per_run=<x> rebuild_eps=<n> list_flat_ratio=<x>
    sse_catchup_ratio=<x> rss_mb=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

E2E_CLIENTS = 20
REBUILD_EVENTS = 1_000_000


@dataclass
class Row:
    figure: str
    value: float | None  # None: missing
    unit: str = ""
    reference: float | None = None
    target: str = ""
    passed: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.reference:
            return None
        return self.value / self.reference


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "missing"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"
    return f"{text} {unit}".strip()


def load(module: str, name: str) -> Callable[..., Any] | None:
    """``module.name`` from ``bench/``, or None when it does not exist (yet)."""
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return found if callable(found) else None


async def call(function: Callable[..., Any], *args: Any) -> Any:
    result = function(*args)
    return await result if inspect.isawaitable(result) else result


# -- the figures ------------------------------------------------------------------------------


async def e2e_rows(seconds: float) -> tuple[list[Row], dict[str, float | None]]:
    measure = load("e2e", "measure")
    if measure is None:
        rows = [
            Row(f"end to end runs/s, {E2E_CLIENTS} clients (of a null server's)", None),
            Row("server CPU per run (of the null server's)", None),
            Row("p99 create → first delta", None),
        ]
        return rows, {"e2e_ratio": None, "cpu_ms_per_run": None}
    r = await call(measure, E2E_CLIENTS, seconds)
    rows = [
        Row(
            f"end to end runs/s, {E2E_CLIENTS} clients (of a null server's)",
            r["runs_s"],
            "runs/s",
            r["null_runs_s"],
            ">= 0.7x",
            r["ratio"] >= 0.7,
        ),
        Row(
            "server CPU per run (of the null server's)",
            r["cpu_ms_per_run"],
            "ms",
            r["null_cpu_ms_per_run"],
            "<= 1.5 ms",
            r["cpu_ms_per_run"] <= 1.5,
        ),
        Row("  of it, the event loop's thread", r["main_cpu_ms_per_run"], "ms"),
        Row("  of it, the other threads (the log writer)", r["threads_cpu_ms_per_run"], "ms"),
        Row(
            "p99 create → first delta",
            r["first_delta_p99_ms"],
            "ms",
            None,
            "< 50 ms",
            r["first_delta_p99_ms"] < 50,
        ),
        Row("p50 create → first delta", r["first_delta_p50_ms"], "ms"),
        Row("p50 create → completed", r["completed_p50_ms"], "ms"),
        Row("p99 create → completed", r["completed_p99_ms"], "ms"),
    ]
    return rows, {"e2e_ratio": r["ratio"], "cpu_ms_per_run": r["cpu_ms_per_run"]}


async def floor_rows(
    seconds: float, server_ms: float | None
) -> tuple[list[Row], dict[str, float | None]]:
    """The least CPU a server of this design could spend on a run (``bench/sqlfloor.py``), and
    the end-to-end server's CPU per run over it."""
    measure = load("sqlfloor", "measure")
    figure = "floor: null server + its SQL replayed alone"
    if measure is None:
        return [Row(figure, None)], {}
    r = await call(measure, E2E_CLIENTS, seconds)
    rows = [
        Row(f"{figure} (of the null server's)", r["floor_ms"], "ms", r["null_ms"]),
        Row("  of it, the server's SQL statements", r["sql_ms"], "ms"),
    ]
    if server_ms is not None:
        rows.append(Row("server CPU per run (of that floor)", server_ms, "ms", r["floor_ms"]))
    return rows, {}


def timed_command(*args: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB and output of ``python -m runs <args>``."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "runs", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.stdout is not None
    output = process.stdout.read().decode()
    if process.returncode != 0:
        raise RuntimeError(f"runlog {' '.join(args)} failed: {output}")
    return elapsed, usage.ru_maxrss / 1024, output


def rebuild_rows() -> tuple[list[Row], dict[str, float | None]]:
    import make_log
    import sse

    log = make_log.cached_log(events=REBUILD_EVENTS, key=sse.KEY)
    verify_s, _, _ = timed_command("verify", "--db", str(log))
    check_s, check_mb, output = timed_command("rebuild", "--check", "--db", str(log))
    if not output.startswith("ok"):
        raise RuntimeError(f"rebuild --check differs: {output}")
    with tempfile.TemporaryDirectory(dir=log.parent) as folder:
        copy = Path(folder) / "rebuild.db"
        shutil.copyfile(log, copy)
        rebuild_s, rebuild_mb, _ = timed_command("rebuild", "--db", str(copy))
    verify_eps = REBUILD_EVENTS / verify_s
    rebuild_eps, check_eps = REBUILD_EVENTS / rebuild_s, REBUILD_EVENTS / check_s
    peak = max(rebuild_mb, check_mb)
    rows = [
        Row("rebuild, 1M-event log (of verify)", rebuild_eps, "events/s", verify_eps),
        Row("rebuild --check (of verify)", check_eps, "events/s", verify_eps),
        Row("rebuild peak RSS", peak, "MB", None, "< 300 MB", peak < 300),
    ]
    for row in rows[:2]:
        row.target, row.passed = ">= 200,000/s", (row.value or 0) >= 200_000
    return rows, {"rebuild_eps": min(rebuild_eps, check_eps)}


async def query_rows(large: int) -> tuple[list[Row], dict[str, float | None]]:
    import queries

    flat = await queries.measure_flat(10_000, large)
    rows = []
    for query, f in flat["queries"].items():
        rows.append(
            Row(
                f"p50 {query} ({large:,} runs / 10,000)",
                f["large_ms"],
                "ms",
                f["small_ms"],
                "<= 2x",
                f["ratio"] <= 2,
            )
        )
    memory = await queries.measure_memory()
    rows.append(
        Row(
            "server RSS, 1M-event log, queries + 1,000 idle SSE",
            memory["rss_mb"],
            "MB",
            None,
            "< 250 MB",
            memory["rss_mb"] < 250,
        )
    )
    return rows, {"list_flat_ratio": flat["list_flat_ratio"], "rss_mb": memory["rss_mb"]}


async def sse_rows() -> tuple[list[Row], dict[str, float | None]]:
    measure_catchup = load("sse", "measure_catchup")
    figure = "SSE catch-up over HTTP (of a raw read)"
    if measure_catchup is None:
        return [Row(figure, None)], {"sse_catchup_ratio": None}
    ratio = (await call(measure_catchup))["catchup_ratio"]
    return [Row(figure, ratio, "x", 1.0, ">= 0.8x", ratio >= 0.8)], {"sse_catchup_ratio": ratio}


# -- the table --------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    header = ("figure", "value", "reference", "ratio", "target", "pass")
    lines = [
        (
            row.figure,
            _number(row.value, row.unit),
            "" if row.reference is None else _number(row.reference, row.unit),
            "" if row.ratio is None else f"{row.ratio:.2f}",
            row.target,
            "missing" if row.value is None else {True: "pass", False: "FAIL", None: ""}[row.passed],
        )
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(6)]
    out = [" | ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    out += [
        " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    ]
    return "\n".join(out)


async def run_all(seconds: float, large: int) -> int:
    rows: list[Row] = []
    result: dict[str, float | None] = {}
    parts: list[tuple[str, Callable[[], Any]]] = [
        ("end to end", lambda: e2e_rows(seconds)),
        ("the floor", lambda: floor_rows(min(seconds, 6.0), result.get("cpu_ms_per_run"))),
        ("rebuild", lambda: asyncio.to_thread(rebuild_rows)),
        ("queries and memory", lambda: query_rows(large)),
        ("SSE catch-up", sse_rows),
    ]
    for name, part in parts:
        print(f"measuring {name}...", file=sys.stderr, flush=True)
        try:
            part_rows, part_result = await part()
        except Exception:
            traceback.print_exc()
            part_rows, part_result = [Row(f"{name} (failed, see above)", None)], {}
        rows += part_rows
        result.update(part_result)
    print(table(rows))
    keys = ("e2e_ratio", "cpu_ms_per_run", "rebuild_eps", "list_flat_ratio", "sse_catchup_ratio")
    values = [f"{k}={_result(result.get(k))}" for k in keys]
    rss = result.get("rss_mb")
    values.append(f"rss_mb={'missing' if rss is None else f'{rss:.0f}'}")
    print("RESULT " + " ".join(values))
    complete = all(row.value is not None for row in rows)
    return 0 if complete and all(row.passed is not False for row in rows) else 1


def _result(value: float | None) -> str:
    if value is None:
        return "missing"
    return f"{value:.0f}" if value >= 1000 else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="of each end-to-end load")
    parser.add_argument("--large", type=int, default=1_000_000, help="runs of the large log")
    args = parser.parse_args()
    sys.exit(asyncio.run(run_all(args.seconds, args.large)))


if __name__ == "__main__":
    main()
