"""Instructions per run, end to end, counted by valgrind's callgrind: a figure that a shared
machine's changing speed does not move.

    .venv/bin/python bench/instructions.py [--runs 100] [--clients 1] [--tree DIR ...]

why
    ``bench/e2e.py`` measures seconds. On a shared 2-core machine the host's steal time comes
    and goes within seconds, and two identical servers measured in alternating windows can
    differ by 20%: a change worth 3% cannot be seen. Callgrind counts the instructions the
    server executes instead, which for the same code and the same requests is the same number
    from one run to the next (two runs of the same tree agree within about 0.2%), whatever else
    the machine is doing. Use it to compare two versions of the code; use ``bench/e2e.py`` for
    what users get.

    It cannot judge a change that depends on time: under valgrind a run takes some 50 times
    longer, so whatever the code does "within 20 ms" (coalescing wake-ups, say) covers a
    fiftieth of the work it covers in real time. Count what such a change avoids in real time
    instead (queries per run, say).

method
    The server under test (``runlog serve`` from each ``--tree``, default this checkout, on a
    fresh SQLite file) runs under ``valgrind --tool=callgrind --instr-atstart=no``: nothing
    is counted while it starts. After a warm-up of ``WARMUP`` runs, counting is switched on
    (``callgrind_control -i on``), ``--clients`` clients of ``bench/e2e.py``'s loop (thread →
    message → run → SSE to ``run.completed``) make ``--runs`` runs between them, and counting
    is switched off. The figure is the instructions of every thread of the server (user space
    only: the kernel's work for its system calls is not counted) divided by the runs.

    ``--clients 1`` (the default) is the most repeatable: with more clients the log writer
    groups commits as the timing falls, and the count moves with it (at 20 clients two runs
    of the same tree gave 6.10 and 6.14 million a run; the null server's moved by 9%).

reference (the same run)
    ``bench/e2e.py``'s null server (canned answers to the same four requests, the bodies the
    first tree's server sent in the warm-up) under the same valgrind and client: the
    instructions an aiohttp server spends on the HTTP alone. ratio = the tree's / the null's.

Each server runs some 50 times slower under valgrind: 100 runs take about a minute and a half
per tree. The last line is machine-readable: ``RESULT instructions_per_run=<n>
null_instructions_per_run=<n> ratio=<x>`` (of the first tree).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
from e2e import KEY, Samples, one_run
from sse import subprocess_server

THIS = Path(__file__).resolve()
ROOT = THIS.parent.parent
WARMUP = 5
#: valgrind slows a Python start-up from about a second to half a minute.
START_TIMEOUT = 180.0


def valgrind(out: Path, argv: list[str]) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        *argv,
    ]


def serve_argv(tree: Path, tmp: Path) -> list[str]:
    """``runlog serve`` with ``tree``'s code on a fresh file in ``tmp``."""
    config = tmp / "server.toml"
    config.write_text("max_live_runs_per_org = 200\n")
    code = (
        f"import sys; sys.path.insert(0, {str(tree)!r}); from runs.cli import main;"
        " sys.exit(main(sys.argv[1:]))"
    )
    return [
        sys.executable,
        "-c",
        code,
        "serve",
        "--db",
        str(tmp / "log.db"),
        "--config",
        str(config),
    ]


def instructions(out: Path) -> int:
    """The total of a callgrind output file (all threads)."""
    for line in out.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def counting(pid: int, on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(pid)],
        check=True,
        capture_output=True,
    )


async def runs(base: str, clients: int, count: int, samples: Samples) -> None:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=2 * clients + 10)
    ) as session:

        async def client(share: int) -> None:
            for _ in range(share):
                await one_run(session, base, samples)

        shares = [count // clients + (i < count % clients) for i in range(clients)]
        await asyncio.gather(*(client(share) for share in shares))


async def count(
    argv: list[str], tmp: Path, name: str, clients: int, total: int
) -> tuple[int, Samples]:
    """Instructions per run of the server ``argv`` under callgrind, and its warm-up's samples
    (with the bodies it sent)."""
    out = tmp / f"{name}.callgrind"
    warm = Samples()
    async with subprocess_server(
        valgrind(out, argv),
        tmp / f"{name}.log",
        key=KEY,
        start_timeout=START_TIMEOUT,
        stop_timeout=START_TIMEOUT,
    ) as (base, pid):
        await runs(base, 1, WARMUP, warm)
        counting(pid, True)
        measured = Samples()
        await runs(base, clients, total, measured)
        counting(pid, False)
        assert measured.runs == total, (measured.runs, total)
    # The file is written as the server exits (subprocess_server waits for it).
    return instructions(out) // total, warm


async def main(args: argparse.Namespace) -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    rows: list[tuple[str, int]] = []
    with tempfile.TemporaryDirectory(prefix="runlog-bench-instr-") as tmp_dir:
        tmp = Path(tmp_dir)
        bodies: dict[str, str] = {}
        for i, tree in enumerate(args.tree):
            work = tmp / f"tree{i}"
            work.mkdir()
            per_run, warm = await count(
                serve_argv(tree, work), work, "server", args.clients, args.runs
            )
            bodies = bodies or warm.bodies
            rows.append((str(tree), per_run))
        bodies_file = tmp / "bodies.json"
        bodies_file.write_text(json.dumps(bodies))
        null_argv = [sys.executable, str(THIS.parent / "e2e.py"), "--null-server", str(bodies_file)]
        null, _ = await count(null_argv, tmp, "null", args.clients, args.runs)
    width = max(len(name) for name, _ in [*rows, ("null server", 0)])
    print(f"{'server':<{width}}  {'instructions/run':>16}  {'of the null':>11}")
    print(f"{'-' * width}  {'-' * 16}  {'-' * 11}")
    for name, per_run in [*rows, ("null server", null)]:
        print(f"{name:<{width}}  {per_run:>16,}  {per_run / null:>11.2f}")
    print(f"{args.runs} runs each, {args.clients} client(s); user-space instructions (callgrind)")
    first = rows[0][1]
    print(
        f"RESULT instructions_per_run={first} null_instructions_per_run={null}"
        f" ratio={first / null:.2f}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="runs counted per server")
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients (default 1)")
    parser.add_argument(
        "--tree",
        type=lambda p: Path(p).resolve(),
        action="append",
        help="a checkout whose server to count (repeat to compare; default this one)",
    )
    args = parser.parse_args()
    args.tree = args.tree or [ROOT]
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
