"""Wake-ups when the log file changes, whoever changed it (another process included).

SQLite has no notification between processes. Every store touches the file's write-ahead log
after each commit (its time stamp: :func:`touch`), once the commit is visible to readers (the
writes themselves come before that), and every store watches that file with Linux ``inotify``:
when it is touched, the store reads the log after the last event it published to live
subscribers. So the server hears of the admin CLI revoking a key as it commits. The watch only
says "look now"; what changed is always read from the log. On systems without ``inotify`` there
is no watch: live subscribers then learn of another process's events with the next event this
process commits (docs/architecture.md, "The log").
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import sys
from collections.abc import Callable

__all__ = ["FileWatch", "touch"]

# Only the touch (a metadata change), not every write: SQLite's own writes come before the
# commit is visible to readers, and waking on each would cost a read per page written.
_IN_ATTRIB = 0x00000004
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000


def touch(path: str) -> None:
    """Tell the watchers of ``path`` to look (its modification time; the content is kept)."""
    with contextlib.suppress(OSError):
        os.utime(path)


class FileWatch:
    """Calls ``on_change`` (on the event loop) after writes to ``path``; coalesced."""

    def __init__(self, path: str, on_change: Callable[[], None]) -> None:
        self.path = path
        self.on_change = on_change
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def active(self) -> bool:
        return self._fd >= 0

    def start(self) -> bool:
        """Start watching; False where the platform cannot (then nothing happens)."""
        if not sys.platform.startswith("linux"):
            return False
        try:
            # The process's own symbols, libc's among them: ctypes.util.find_library would
            # run `ldconfig -p` in a subprocess to find libc's file name, at every start.
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                return False
            if libc.inotify_add_watch(fd, os.fsencode(self.path), _IN_ATTRIB) < 0:
                os.close(fd)
                return False
        except (OSError, AttributeError):
            return False
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)
        return True

    def _readable(self) -> None:
        # Take the queued notifications: one look at the log covers them all. The kernel
        # merges a touch into an identical one not yet read, so a few bytes are queued at
        # most, and one read takes them (more would leave the descriptor readable, and a
        # second look does no harm). Not read until empty: that last read raised
        # BlockingIOError at every wake-up.
        try:
            os.read(self._fd, 65536)
        except BlockingIOError:
            pass
        except OSError:
            self.stop()
            return
        self.on_change()

    def stop(self) -> None:
        if self._fd >= 0:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
