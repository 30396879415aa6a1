"""``runlog serve --workers N``: N server processes on one port, kept up by a parent.

Only on PostgreSQL (several processes on one SQLite file would each drive the runs they see as
their own). The parent prepares the log once, before any worker exists: it opens the store
(creating the schema), records the personas and, on an empty log, bootstraps the first org,
user and API key, and prints the key once. Workers started after that find the log prepared,
so two of them can never both bootstrap an empty database.

Then it forks the workers (a fork of the parent after its event loop and the store's threads
have ended: each worker starts a fresh loop and its own connections). Each serves on the same
host and port with ``SO_REUSEPORT``, so the kernel spreads new connections over them; live
events cross between them through the log (eventstore/pg_listen.py). The parent waits for
signals only (``sigtimedwait``: no timer while all is well): a worker that dies is started
again after a delay that grows while it keeps dying young; a worker that cannot stay up
(``MAX_QUICK_FAILURES`` deaths in a row, each within ``HEALTHY_SECONDS`` of its start) stops
the others and the parent exits 1. SIGTERM or SIGINT to the parent is forwarded to every
worker, which stops gracefully; the parent waits for them (then kills any still running after
the shutdown timeout and a margin) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping

import structlog

from runs.config import Config

__all__ = ["HEALTHY_SECONDS", "MAX_QUICK_FAILURES", "prepare", "serve_workers"]

log = structlog.get_logger("runlog.workers")

#: A worker that ran at least this long before dying is restarted at once.
HEALTHY_SECONDS = 10.0
#: Deaths in a row, each sooner than HEALTHY_SECONDS after the start, before giving up.
MAX_QUICK_FAILURES = 5
FIRST_DELAY = 0.5
MAX_DELAY = 5.0
#: Beyond the graceful shutdown timeout, how long the parent waits before killing a worker.
STOP_MARGIN = 10.0
_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}


async def prepare(config: Config, env: Mapping[str, str]) -> str | None:
    """Open the log once (schema, personas, first-start bootstrap); the bootstrap API key when
    this start created it."""
    from eventstore import open_event_store, startup_lock
    from projections import all_projections
    from projections.queries import Queries
    from runs.personas import PersonaRegistry
    from runs.service import Accounts
    from runs.startup import bootstrap, load_secret, record_personas

    load_secret(config)  # a missing RUNLOG_SECRET_KEY is refused before any worker starts
    personas = PersonaRegistry.from_dirs(config.personas_dir)
    store = await open_event_store(config.db, all_projections())
    try:
        async with startup_lock(config.db):
            await record_personas(store, Queries(store), personas)
            return await bootstrap(Accounts(store), env)
    finally:
        await store.close()


class _Slot:
    """One worker's place: its process, when it started, how often it died young."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.started = 0.0
        self.quick_failures = 0
        self.restart_at: float | None = None


def serve_workers(
    config: Config,
    workers: int,
    serve_one: Callable[[int], int],
    banner: Callable[[str | None], None],
    env: Mapping[str, str] | None = None,
) -> int:
    """Prepare the log, print the banner, run ``workers`` forked copies of ``serve_one(index)``
    (its return value is the worker's exit code) and supervise them; the parent's exit code."""
    key = asyncio.run(prepare(config, os.environ if env is None else env))
    banner(key)
    # Imported once here, before the fork: every worker (and every restart) starts without
    # importing the HTTP stack again, and shares its pages with the parent.
    import server  # noqa: F401

    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        return _Supervisor(config, workers, serve_one).run()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


class _Supervisor:
    def __init__(self, config: Config, workers: int, serve_one: Callable[[int], int]) -> None:
        self.config = config
        self.serve_one = serve_one
        self.slots = [_Slot(index) for index in range(workers)]
        self.stopping: signal.Signals | None = None
        self.failed = False

    def run(self) -> int:
        for slot in self.slots:
            self._spawn(slot)
        while self.stopping is None:
            self._reap()
            if self.failed:
                self._stop(signal.SIGTERM)
                return 1
            now = time.monotonic()
            due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
            for slot in self.slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    self._spawn(slot)
            timeout = max(0.0, min(due) - now) if due else None
            self._wait_signal(timeout)
        return self._stop(self.stopping)

    def _wait_signal(self, timeout: float | None) -> None:
        # Signals are blocked in the parent and taken here, one at a time: no handler runs
        # in the middle of the bookkeeping.
        info = (
            signal.sigwaitinfo(_SIGNALS)
            if timeout is None
            else signal.sigtimedwait(_SIGNALS, max(timeout, 0.001))
        )
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            self.stopping = signal.Signals(info.si_signo)

    def _spawn(self, slot: _Slot) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for sig in _SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                code = self.serve_one(slot.index)
            except BaseException as exc:  # the worker reports why and exits
                print(f"runlog worker {slot.index}: {exc!r}", file=sys.stderr, flush=True)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        slot.pid = pid
        slot.started = time.monotonic()
        slot.restart_at = None
        log.info("workers.started", worker=slot.index, pid=pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = 0
            lived = time.monotonic() - slot.started
            slot.quick_failures = slot.quick_failures + 1 if lived < HEALTHY_SECONDS else 1
            delay = min(FIRST_DELAY * 2 ** (slot.quick_failures - 1), MAX_DELAY)
            log.warning(
                "workers.died",
                worker=slot.index,
                pid=pid,
                exit=_describe(status),
                lived_s=round(lived, 1),
                restart_in_s=delay,
            )
            if slot.quick_failures > MAX_QUICK_FAILURES:
                log.error("workers.giving_up", worker=slot.index, failures=slot.quick_failures)
                self.failed = True
                continue
            slot.restart_at = time.monotonic() + delay

    def _stop(self, sig: signal.Signals) -> int:
        """Forward ``sig`` to every worker and wait for them; 0 if all stopped cleanly."""
        live = {slot.pid: slot for slot in self.slots if slot.pid}
        for pid in live:
            _signal(pid, sig)
        deadline = time.monotonic() + self.config.shutdown_timeout_seconds + STOP_MARGIN
        clean = True
        while live:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for pid in live:
                    log.error("workers.killed", pid=pid)
                    _signal(pid, signal.SIGKILL)
                clean = False
                deadline = float("inf")
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                signal.sigtimedwait({signal.SIGCHLD}, min(max(remaining, 0.001), 1.0))
                continue
            if live.pop(pid, None) is not None and os.waitstatus_to_exitcode(status) != 0:
                clean = False
        log.info("workers.stopped", clean=clean)
        return 0 if clean and not self.failed else 1


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
