"""PostgreSQL tests never skip silently: with CI=true an unreachable server fails the run with a
message saying what to do; elsewhere the tests are skipped with that message as the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ONE_PG_TEST = "tests/eventstore/test_postgres.py::test_an_auditor_reads_the_log_with_plain_sql"


def run_pytest(ci: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_XDIST_WORKER")}
    env["CI"] = ci
    env["RUNLOG_TEST_PG_URL"] = "postgresql://postgres@127.0.0.1:9/postgres"  # nothing listens
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-n0", "-p", "no:cacheprovider", "-rs", ONE_PG_TEST],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_under_ci_an_unreachable_server_fails_the_run() -> None:
    result = run_pytest("true")
    assert result.returncode == 1, result.stdout
    assert "PostgreSQL is not reachable at postgresql://postgres@127.0.0.1:9" in result.stdout
    assert "1 error" in result.stdout


def test_outside_ci_an_unreachable_server_skips_saying_why() -> None:
    result = run_pytest("")
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert "PostgreSQL is not reachable" in result.stdout
