"""The files in deploy/ that the README's "Deploy" section installs are complete and valid."""

from __future__ import annotations

import shlex
from pathlib import Path

from runs.cli import build_parser
from runs.config import load_config

DEPLOY = Path(__file__).parent.parent / "deploy"


def unit() -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in (DEPLOY / "runlog.service").read_text(encoding="utf-8").splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current[key] = value
    return sections


def test_the_systemd_unit_runs_the_binary_as_a_service() -> None:
    service = unit()["Service"]
    assert service["Restart"] == "on-failure"
    assert service.get("DynamicUser") == "yes" or service.get("User") == "runlog"
    assert service["StateDirectory"] == "runlog"
    assert service["KillSignal"] == "SIGTERM"
    # The stop timeout outlasts the service's own graceful shutdown.
    config = load_config(str(DEPLOY / "runlog.toml"), env={})
    assert float(service["TimeoutStopSec"]) > config.shutdown_timeout_seconds
    program, *argv = shlex.split(service["ExecStart"])
    assert program.endswith("/runlog")
    args = build_parser().parse_args(argv)
    assert args.command == "serve"
    assert args.db.startswith("/var/lib/runlog/")  # under StateDirectory
    assert args.config == "/etc/runlog/runlog.toml"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_the_sample_config_loads() -> None:
    config = load_config(str(DEPLOY / "runlog.toml"), env={})
    assert config.host == "127.0.0.1"
    assert [r.id for r in config.routes] == ["sonnet"]
    assert config.routes[0].api_key_env == "ANTHROPIC_API_KEY"
