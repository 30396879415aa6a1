"""Server CPU per end-to-end run of two checkouts, measured side by side in paired windows.

    .venv/bin/python bench/ab.py --tree A --tree B [--pairs 16] [--seconds 2] [--clients 20]

why
    ``bench/instructions.py`` counts user-space instructions, which repeat from one run to the
    next, but it does not see the kernel's work for the server's system calls, nor what a
    change does to how work falls in time (grouped commits, an event loop of another kind).
    ``bench/e2e.py`` sees both, but a shared machine's speed drifts by 20% within minutes, so
    two servers measured minutes apart cannot be told apart by a few percent. Here both
    servers are up at once and take turns, and the figure is the median over pairs of the
    ratio within a pair: a drift slower than one pair (a few seconds) moves both sides of it.

method
    Each ``--tree`` (a checkout) runs ``runlog serve`` on a fresh SQLite file, as
    ``bench/instructions.py`` starts it. After a warm-up of both, ``--pairs`` pairs of windows
    follow; in each, ``--clients`` clients of ``bench/e2e.py``'s loop (thread → message → run
    → SSE to ``run.completed``) load one server for ``--seconds``, then the other (A first in
    even pairs, B first in odd ones). A window's figure is the server's CPU time (user and
    system, every thread, from ``/proc``) over the runs completed in it.

reference (the same run)
    Tree A, measured in the same pairs. ratio = median over pairs of B's CPU per run / A's.
    The table also gives each tree's median CPU per run by thread (the event loop's and the
    others': the log writer above all), and create → first delta and create → completed
    percentiles over all of its runs.

The last line is machine-readable: ``RESULT cpu_ratio=<B/A> a_cpu_ms_per_run=<x>
b_cpu_ms_per_run=<x>`` (medians).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from e2e import KEY, Samples, cpu_by_thread, load, percentile
from instructions import serve_argv
from sse import subprocess_server

WARMUP_SECONDS = 2.0


class Side:
    """One tree's windows."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cpu_ms: list[float] = []
        self.by_thread: list[dict[str, float]] = []
        self.samples = Samples()

    async def window(self, base: str, pid: int, clients: int, seconds: float) -> None:
        before = cpu_by_thread(pid)
        samples, _wall, cpu = await load(base, clients, seconds, pid)
        after = cpu_by_thread(pid)
        self.cpu_ms.append(cpu / samples.runs * 1000)
        self.by_thread.append(
            {k: (after[k] - before.get(k, 0.0)) / samples.runs * 1000 for k in after}
        )
        self.samples.runs += samples.runs
        self.samples.first_delta += samples.first_delta
        self.samples.completed += samples.completed


async def compare(
    a: Path, b: Path, *, pairs: int, seconds: float, clients: int
) -> tuple[Side, Side, list[float]]:
    sides = Side(str(a)), Side(str(b))
    with tempfile.TemporaryDirectory(prefix="runlog-bench-ab-") as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        async with (
            subprocess_server(serve_argv(a, tmp / "a"), tmp / "a.log", key=KEY) as (base_a, pid_a),
            subprocess_server(serve_argv(b, tmp / "b"), tmp / "b.log", key=KEY) as (base_b, pid_b),
        ):
            servers = [(sides[0], base_a, pid_a), (sides[1], base_b, pid_b)]
            for _side, base, pid in servers:
                await load(base, clients, WARMUP_SECONDS, pid)
            for i in range(pairs):
                for side, base, pid in servers if i % 2 == 0 else servers[::-1]:
                    await side.window(base, pid, clients, seconds)
    ratios = [y / x for x, y in zip(sides[0].cpu_ms, sides[1].cpu_ms, strict=True)]
    return sides[0], sides[1], ratios


def print_table(a: Side, b: Side, ratios: list[float], clients: int, seconds: float) -> None:
    header = (
        f"{'tree':<4}  {'CPU ms/run':>10}  {'loop user/sys':>13}  {'others user/sys':>15}"
        f"  {'1st delta p50/p99 ms':>20}  {'completed p50/p99 ms':>20}  {'runs':>6}"
    )
    print(header)
    print("-" * len(header))
    for label, side in (("A", a), ("B", b)):
        part = {k: statistics.median(w[k] for w in side.by_thread) for k in side.by_thread[0]}
        first = [x * 1000 for x in side.samples.first_delta]
        done = [x * 1000 for x in side.samples.completed]
        print(
            f"{label:<4}  {statistics.median(side.cpu_ms):>10.2f}"
            f"  {part['main user']:>6.2f}/{part['main sys']:<6.2f}"
            f"  {part.get('threads user', 0.0):>7.2f}/{part.get('threads sys', 0.0):<7.2f}"
            f"  {percentile(first, 0.5):>9.1f} / {percentile(first, 0.99):<8.1f}"
            f"  {percentile(done, 0.5):>9.1f} / {percentile(done, 0.99):<8.1f}"
            f"  {side.samples.runs:>6,}"
        )
    print(f"A = {a.name}")
    print(f"B = {b.name}")
    print(
        f"{len(ratios)} pairs of {seconds:g} s windows, {clients} clients; B/A per pair:"
        f" {' '.join(f'{r:.2f}' for r in ratios)}"
    )
    print(f"median B/A: {statistics.median(ratios):.3f}")
    print(
        f"RESULT cpu_ratio={statistics.median(ratios):.3f}"
        f" a_cpu_ms_per_run={statistics.median(a.cpu_ms):.3f}"
        f" b_cpu_ms_per_run={statistics.median(b.cpu_ms):.3f}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--tree",
        type=lambda p: Path(p).resolve(),
        action="append",
        required=True,
        help="a checkout whose server to measure: give it twice, A then B",
    )
    parser.add_argument("--pairs", type=int, default=16, help="pairs of windows (default 16)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per window")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients")
    args = parser.parse_args()
    if len(args.tree) != 2:
        parser.error("give --tree exactly twice (A, then B)")
    return args


async def main(args: argparse.Namespace) -> None:
    a, b, ratios = await compare(
        args.tree[0], args.tree[1], pairs=args.pairs, seconds=args.seconds, clients=args.clients
    )
    print_table(a, b, ratios, args.clients, args.seconds)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
