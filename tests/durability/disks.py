"""Small file systems of their own for disk-fault tests: a tmpfs, else a loop-mounted image."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["remount_read_only", "small_disk"]


def _mount(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def small_disk(where: Path, megabytes: int = 16) -> Iterator[Path]:
    """A file system of ``megabytes`` mounted at ``where``: a tmpfs, else an ext4 image on a
    loop device. Skipped (with the reason) only where neither can be mounted, never in CI."""
    where.mkdir()
    mounted = _mount(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)])
    if not mounted and shutil.which("mkfs.ext4"):
        image = where.with_suffix(".img")
        with image.open("wb") as handle:
            handle.truncate(megabytes * 1024 * 1024)
        mounted = _mount(["mkfs.ext4", "-q", "-F", str(image)]) and _mount(
            ["mount", "-o", "loop", str(image), str(where)]
        )
    if not mounted:
        reason = "cannot mount a small tmpfs or loop file system here (needs root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield where
    finally:
        if not _mount(["umount", str(where)]):
            _mount(["umount", "-l", str(where)])


def remount_read_only(where: Path) -> None:
    assert _mount(["mount", "-o", "remount,ro", str(where)]), f"cannot remount {where} read-only"
