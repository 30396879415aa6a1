"""``runlog --version`` from a checkout, and what ``runlog backup`` refuses (the copy of a live
log is tested against a real server in tests/durability/test_backup.py)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from runs.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
RELEASE_LOG = ROOT / "tests" / "data" / "release-0.1.0.db"


def test_version_names_the_release_and_the_checkouts_commit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--version"])
    assert exit_.value.code == 0
    line = capsys.readouterr().out.strip()
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    version = next(
        x.split('"')[1]
        for x in (ROOT / "pyproject.toml").read_text().splitlines()
        if x.startswith("version =")
    )
    assert line.startswith(f"runlog {version} (source, commit {head[:12]}")


def test_backup_honours_the_config_and_refuses_an_existing_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNLOG_DB", raising=False)
    db = tmp_path / "live.db"
    shutil.copyfile(RELEASE_LOG, db)
    config = tmp_path / "runlog.toml"
    config.write_text(f'db = "{db}"\n')
    target = tmp_path / "copy.db"

    assert cli_main(["backup", "--config", str(config), "--to", str(target)]) == 0
    out = capsys.readouterr().out
    with sqlite3.connect(RELEASE_LOG) as conn:
        position, digest = conn.execute(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
        ).fetchone()
    assert f"head position {position}, head hash {digest}" in out
    with sqlite3.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (5,)

    before = target.read_bytes()
    assert cli_main(["backup", "--config", str(config), "--to", str(target)]) == 2
    assert "exists" in capsys.readouterr().err
    assert target.read_bytes() == before

    assert cli_main(["backup", "--db", str(tmp_path / "none.db"), "--to", "x.db"]) == 2
    assert "no log at" in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()


def test_backup_of_a_postgresql_log_points_to_pg_dump(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "copy.db"
    code = cli_main(["backup", "--db", "postgresql://127.0.0.1/runlog", "--to", str(target)])
    assert code == 2
    err = capsys.readouterr().err
    assert "pg_dump" in err
    assert "runlog copy" in err
    assert not target.exists()
