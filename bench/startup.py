"""Start-up time: from starting ``runlog serve`` to the first ``GET /readyz`` that answers 200.

    .venv/bin/python bench/startup.py [--reps 11] [--log runlog-1m.db] [COMMAND ...]

COMMAND is how to start runlog (default ``dist/runlog``; ``.venv/bin/python -m runs`` for a
source install). Each repetition starts it with ``env -i PATH=/usr/bin:/bin`` (what a systemd
unit gives it) on 127.0.0.1 and a free port, polls ``/readyz`` every 2 ms, then stops it with
SIGTERM. On a shared machine wall-clock time includes waiting for a CPU, so the CPU time the
processes had used when ``/readyz`` first answered 200 (user + system of runlog and its child
processes, read from /proc) is printed beside it: on an idle machine with the file in the page
cache, ready time is close to it. ``empty``: a new log each time (the first start, with its
bootstrap); ``--log``: an existing log (``bench/make_log.py`` writes one), after one start
that is not counted (it records the personas). Prints the median, min and max of each in seconds.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False


def start_once(command: list[str], db: Path, cwd: Path) -> tuple[float, float]:
    port = free_port()
    serve_args = ["--db", str(db), "--port", str(port)]
    started = time.perf_counter()
    process = subprocess.Popen(
        ["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", *command, "serve", *serve_args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not ready(port):
            if process.poll() is not None:
                raise SystemExit(f"runlog exited with {process.returncode}")
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    return elapsed, cpu


def cpu_seconds(pid: int) -> float:
    """User + system time of ``pid`` and its descendants, alive now (the one-file binary runs
    as a parent that unpacks and a child that serves)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pending.extend(int(child) for child in children)
    return total


def summary(name: str, results: list[tuple[float, float]]) -> str:
    times = [wall for wall, _ in results]
    cpu = statistics.median(c for _, c in results)
    return (
        f"{name:<26} ready: median {statistics.median(times):6.3f} s"
        f"  min {min(times):6.3f}  max {max(times):6.3f}   CPU to ready: median {cpu:6.3f} s"
        f"  (n={len(times)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="*", default=[str(ROOT / "dist" / "runlog")])
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--log", help="an existing log to start on as well")
    args = parser.parse_args()
    command = [os.path.abspath(args.command[0]), *args.command[1:]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        empty = []
        for i in range(args.reps):
            empty.append(start_once(command, work / f"empty-{i}.db", work))
        print(summary("empty log (first start)", empty))
        if args.log:
            log = Path(args.log).resolve()
            start_once(command, log, work)
            existing = [start_once(command, log, work) for _ in range(args.reps)]
            print(summary(f"{Path(args.log).name}", existing))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
