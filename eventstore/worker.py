"""The writer's thread: one thread that runs the store's blocking calls (connect, commit a
batch, probe, close) in the order they were handed over, and hands each outcome back to the
event loop.

It replaces ``loop.run_in_executor`` on a one-thread ``ThreadPoolExecutor``, whose every call
makes a ``concurrent.futures.Future`` with its condition variable, takes the executor's locks,
and chains an asyncio future to it, whose checks raise and catch an ``AttributeError`` three
times a call. A commit is one such call, and a run makes several: with this thread the server's
instructions per end-to-end run fell by about 100,000 a commit, both threads counted
(callgrind, ``bench/instructions.py``, one client). Here a call is a tuple on a
``queue.SimpleQueue`` and one ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["WorkerThread"]

T = TypeVar("T")

_Job = tuple[
    asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...], bool
]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the event loop: the call's outcome, unless its caller stopped waiting."""
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class WorkerThread:
    """One thread, started by the first call, running calls one at a time in order.

    A call whose future is cancelled before the thread takes it up is not run (unless it was
    handed over with :meth:`call_anyway`); once it runs it runs to its end (as with an
    executor). The thread is a daemon: a process that exits without closing its store does not
    wait for a call in flight, whose transaction the database then drops whole.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` on the thread; the future is its result or its exception."""
        return self._call(fn, args, False)

    def call_anyway(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """:meth:`call`, but run even if the caller stops waiting before it starts (the commit
        of a transaction the caller opened: the connection must not be left inside it)."""
        return self._call(fn, args, True)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], anyway: bool) -> asyncio.Future[T]:
        if self._stopped:
            raise RuntimeError(f"{self.name}: the thread was stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put((loop, future, fn, args, anyway))
        return future

    def _work(self) -> None:
        jobs = self._jobs
        while (job := jobs.get()) is not None:
            loop, future, fn, args, anyway = job
            # Read from this thread, a cancel is seen or not, never half-seen: it only decides
            # whether a call that nobody awaits any more is skipped.
            if future.cancelled() and not anyway:
                continue
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the caller, as an executor does
                result, error = None, exc
            # A closed loop has nobody left to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, result, error)
            del job, future, result, error  # nothing of a call outlives it on this thread

    def stop(self) -> None:
        """Let the calls already handed over finish, then end the thread (blocks until it has
        ended). Later calls raise ``RuntimeError``."""
        self._stopped = True
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
