"""Which runlog this is: the release version and the git commit it was built from.

A binary made by ``scripts/build-binary`` carries ``_build_info.json`` beside this module
(written at build time); run from source, the commit is asked of git when it is first needed,
so a plain start-up never spawns a process for it.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

__all__ = ["BUILD_INFO_FILE", "build_info", "version_line"]

BUILD_INFO_FILE = "_build_info.json"
_HERE = Path(__file__).resolve().parent


@functools.cache
def build_info() -> dict[str, str]:
    """``{"version", "commit", "source"}``; ``source`` is ``"binary"`` or ``"source"``."""
    recorded = _HERE / BUILD_INFO_FILE
    if recorded.is_file():
        info = json.loads(recorded.read_text(encoding="utf-8"))
        return {"version": info["version"], "commit": info["commit"], "source": "binary"}
    return {"version": _installed_version(), "commit": _git_commit(), "source": "source"}


def version_line() -> str:
    """``runlog 0.1.0 (commit 1a2b3c4d5e6f)``, or ``(source, commit ...)`` from a checkout."""
    info = build_info()
    origin = "" if info["source"] == "binary" else "source, "
    return f"runlog {info['version']} ({origin}commit {info['commit']})"


def _installed_version() -> str:
    # Only a source checkout asks the installed metadata: importlib.metadata (with zipfile,
    # email and csv) is a large import that the binary's start-up has no use for.
    from importlib import metadata

    try:
        return metadata.version("runlog")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git(*args: str) -> str:
    # Our own fixed arguments; git from PATH, as a user runs it.
    return subprocess.run(  # noqa: S603
        ["git", *args],  # noqa: S607
        cwd=_HERE,
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    ).stdout.strip()


def _git_commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), or ``unknown`` without git."""
    try:
        commit = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit or "unknown"
