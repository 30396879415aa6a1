"""The file watch that tells a store another process committed (eventstore/watch.py)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from eventstore.watch import FileWatch, touch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


async def test_touches_queued_before_a_wake_up_are_taken_at_once_and_later_ones_heard(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db-wal"
    path.write_bytes(b"")
    changes = asyncio.Event()
    count = 0

    def on_change() -> None:
        nonlocal count
        count += 1
        changes.set()

    watch = FileWatch(str(path), on_change)
    assert watch.start()
    try:
        for _ in range(1_000):  # before the loop gets to the watch
            touch(str(path))
        await asyncio.wait_for(changes.wait(), 5)
        await asyncio.sleep(0.05)
        assert count == 1
        with pytest.raises(BlockingIOError):
            os.read(watch._fd, 65536)  # nothing left queued
        changes.clear()
        touch(str(path))
        await asyncio.wait_for(changes.wait(), 5)
        assert count == 2
    finally:
        watch.stop()
    assert not watch.active
