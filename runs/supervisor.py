"""One asyncio task per live run: launch, cancel, resume, shut down.

See docs/architecture.md, "Execution".

A run has a task only while it works. A run waiting for input has none (no task, no timer
that could expire it): the input handler appends to its log and launches it again.

A process drives a run only while it holds the run's lease (``eventstore.leases``): it renews
its leases every third of ``lease_seconds``, stops a task whose lease it lost without appending
anything, and (when other processes share the log) takes over runs whose lease lapsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from eventstore import (
    ConcurrencyError,
    EventStore,
    Leases,
    RecordedEvent,
    StorageUnavailable,
    process_id,
)
from eventstore.leases import LocalLeases
from projections.queries import Queries
from runs import logs
from runs.config import Route
from runs.events import RunFailed, RunStarted, decode_event
from runs.executor import RunExecutor
from runs.personas import DEFAULT_PERSONA_ID, Persona, PersonaRegistry
from runs.providers.base import Provider
from runs.repository import append_decided, read_run, while_unwritable
from runs.routes import RouteTable
from runs.run import decide_cancel
from runs.tools import ToolRegistry

__all__ = ["Supervisor"]

log = structlog.get_logger("runlog.supervisor")

ProviderFactory = Callable[[Route], Provider]

#: How often a run's task starts over from the log after losing a race for its stream.
_TASK_ATTEMPTS = 3
#: Seconds between two looks for runs whose lease lapsed (other processes share the log).
TAKEOVER_INTERVAL_S = 0.5
#: Every this many looks, also for running runs with no lease at all (a log written before
#: leases, a process that died between taking a lease and appending).
_UNLEASED_EVERY = 20
_TERMINAL_TYPES = frozenset({"run.completed", "run.failed", "run.cancelled"})


class Supervisor:
    def __init__(
        self,
        *,
        store: EventStore,
        queries: Queries,
        routes: RouteTable,
        personas: PersonaRegistry,
        tools: ToolRegistry,
        provider_for: ProviderFactory,
        coalesce_s: float = 0.05,
        storage_retry_s: float = 600.0,
        leases: Leases | None = None,
    ) -> None:
        self.storage_retry_s = storage_retry_s
        self.leases: Leases = leases or LocalLeases(process_id(), 10.0)
        #: This process's id, recorded in ``run.started`` and ``run.resumed``.
        self.process = self.leases.owner
        self.store = store
        self.queries = queries
        self.routes = routes
        self.personas = personas
        self.tools = tools
        self.provider_for = provider_for
        self.coalesce_s = coalesce_s
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._executors: dict[str, RunExecutor] = {}
        self._cancelled_by: dict[str, str | None] = {}
        # Runs to launch again when their current task ends (input that arrived while the
        # task was still finishing its step).
        self._relaunch: set[str] = set()
        # When each lease held was taken (monotonic): a renewal that started before a lease
        # was taken says nothing about it.
        self._leased_at: dict[str, float] = {}
        self._stale: set[str] = set()
        # Tasks stopped because their lease was lost, or because their run ended through
        # another process (a cancel sent there): they append nothing more.
        self._lost: set[str] = set()
        self._ended_elsewhere: set[str] = set()
        # Runs whose terminal event this process is appending (not "ended elsewhere").
        self._ending: set[str] = set()
        self._background: list[asyncio.Task[None]] = []
        self._unwatch: Callable[[], None] | None = None
        self.accepting = True

    # -- leases -----------------------------------------------------------------------------

    def start(self) -> None:
        """Renew leases, and watch for runs to take over, when other processes share the log."""
        if not self.leases.shared or self._background:
            return
        self._background = [
            asyncio.create_task(self._renew_loop(), name="lease-renewal"),
            asyncio.create_task(self._takeover_loop(), name="lease-takeover"),
        ]
        self._unwatch = self.store.live.watch(self._on_commit)

    async def claim(self, run_id: str) -> bool:
        """Take the run's lease (before appending what makes it runnable). ``False``: another
        process holds it."""
        try:
            taken = await self.leases.acquire(run_id)
        except Exception as exc:
            raise StorageUnavailable(f"cannot take the run's lease: {exc}") from exc
        if taken:
            self._leased_at.setdefault(run_id, time.monotonic())
        return taken

    async def unclaim(self, run_id: str) -> None:
        """Give a lease up (the append it was taken for was refused, or the task ended)."""
        self._leased_at.pop(run_id, None)
        try:
            await self.leases.release(run_id)
        except Exception as exc:  # it lapses by itself
            log.warning("run.lease_release_failed", run_id=run_id, error=repr(exc))

    async def _renew_loop(self) -> None:
        interval = self.leases.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            started = time.monotonic()
            try:
                held = await self.leases.renew()
            except Exception as exc:
                log.warning("lease.renew_failed", error=repr(exc))
                continue
            # A lease held with no task and no claim behind it (its release failed, or the task
            # was stopped while giving it up) would keep the run from anyone else: let it go
            # once two renewals in a row found it so.
            stale = held - self.tasks.keys() - self._leased_at.keys()
            for run_id in stale & self._stale:
                await self.unclaim(run_id)
            self._stale = stale
            for run_id, task in list(self.tasks.items()):
                leased_at = self._leased_at.get(run_id)
                if run_id in held or leased_at is None or leased_at >= started or task.done():
                    continue
                # Another process took the run (ours lapsed while we could not renew): stop
                # without appending; its appends would be refused anyway (expected_seq).
                log.warning("run.lease_lost", run_id=run_id)
                self._leased_at.pop(run_id, None)
                self._lost.add(run_id)
                task.cancel()

    async def _takeover_loop(self) -> None:
        looks = 0
        while self.accepting:
            await asyncio.sleep(TAKEOVER_INTERVAL_S)
            try:
                candidates = await self.leases.lapsed()
                if looks % _UNLEASED_EVERY == 0:
                    running = await self.queries.runs_with_status("running")
                    candidates += await self.leases.unheld(
                        [r for r in running if r not in self.tasks]
                    )
                looks += 1
                for run_id in dict.fromkeys(candidates):
                    await self._take_over(run_id)
            except Exception as exc:
                log.warning("lease.takeover_failed", error=repr(exc))

    async def _take_over(self, run_id: str) -> None:
        if not self.accepting or run_id in self.tasks:
            return
        if await self.queries.run_status(run_id) != "running":
            await self.leases.forget(run_id)  # nothing to drive: drop the stale lease
            return
        if await self.claim(run_id):
            log.info("run.taken_over", run_id=run_id)
            self.launch(run_id, resumed=True, leased=True, reason="takeover")

    def _on_commit(self, events: Sequence[RecordedEvent]) -> None:
        """A run this process drives got its terminal event from another process (a cancel
        sent there): stop its task (and its provider request) at once, appending nothing."""
        for event in events:
            if event.type not in _TERMINAL_TYPES or not event.stream.startswith("run-"):
                continue
            run_id = event.stream[4:]
            task = self.tasks.get(run_id)
            if (
                task is None
                or task.done()
                or run_id in self._cancelled_by
                or run_id in self._ending
                or self._executor_ending(run_id)
            ):
                continue
            log.info("run.ended_elsewhere", run_id=run_id, by=event.type)
            self._ended_elsewhere.add(run_id)
            task.cancel()

    def _executor_ending(self, run_id: str) -> bool:
        executor = self._executors.get(run_id)
        return executor is not None and executor.ending

    # -- launching --------------------------------------------------------------------------

    def launch(
        self,
        run_id: str,
        *,
        resumed: bool = False,
        leased: bool = False,
        reason: str = "restart",
        events: list[RecordedEvent] | None = None,
    ) -> None:
        """Start (or continue) a run's task. If it still has one (finishing the step that
        ended in a wait, say), it is launched again when that task ends: the new task reads
        the log, so a launch is never lost and never doubled. ``leased``: the caller took the
        run's lease (:meth:`claim`); otherwise the task takes it first, and does nothing if
        another process holds it. ``events``: the run's events as the caller just appended
        them (a new run's ``run.started``), which its first pass starts from instead of
        reading them back; an event appended elsewhere since fails that pass's first append,
        and the next pass reads the log."""
        if not self.accepting:
            return
        running = self.tasks.get(run_id)
        if running is not None and not running.done():
            self._relaunch.add(run_id)
            return
        # A task that has ended but is not forgotten yet (its done callback runs on the next
        # loop turn and would drop the relaunch) is replaced now.
        task = asyncio.create_task(
            self._drive(run_id, resumed, leased, reason, events), name=f"run-{run_id}"
        )
        self.tasks[run_id] = task
        task.add_done_callback(lambda _: self._forget(run_id, task))

    def _forget(self, run_id: str, task: asyncio.Task[None]) -> None:
        # Every task's outcome is retrieved here: an error is logged, never left unretrieved.
        if not task.cancelled() and task.exception() is not None:
            log.error("run.task_failed", run_id=run_id, error=repr(task.exception()))
        if self.tasks.get(run_id) is task:
            del self.tasks[run_id]
            self._executors.pop(run_id, None)
            self._cancelled_by.pop(run_id, None)
            self._relaunch.discard(run_id)
            self._lost.discard(run_id)
            self._ended_elsewhere.discard(run_id)
            self._ending.discard(run_id)

    async def resume_all(self) -> list[str]:
        """Continue every run the log says is running (after a restart or a crash) whose lease
        nobody holds (another process may be driving it)."""
        running = await self.queries.runs_with_status("running")
        run_ids = []
        for run_id in await self.leases.unheld(running):
            if await self.claim(run_id):
                run_ids.append(run_id)
                self.launch(run_id, resumed=True, leased=True)
        if run_ids:
            log.info("runs.resumed", count=len(run_ids))
        return run_ids

    async def _drive(
        self,
        run_id: str,
        resumed: bool,
        leased: bool,
        reason: str,
        events: list[RecordedEvent] | None = None,
    ) -> None:
        """The run's task: under its lease, run steps until it ends or waits; then give the
        lease up."""
        structlog.contextvars.bind_contextvars(run_id=run_id)
        # A lease the caller took may have been given up since by a task of the same run
        # that was just ending: take it again.
        leased = leased and run_id in self._leased_at
        if not leased and not await self.claim(run_id):
            return  # another process drives it (and sees what we appended in the log)
        while True:
            self._relaunch.discard(run_id)
            status = await self._run(run_id, resumed, reason, events)
            resumed, events = False, None
            if run_id in self._lost:
                return  # not ours any more: the lease is another process's
            if run_id in self._relaunch and self.accepting:
                continue
            await self.unclaim(run_id)
            # Input sent to another process while this task was finishing: that process could
            # not take the lease, so the run is ours to continue (unless it took the lease
            # since, now that it is free).
            # (The relaunch is looked at after the status query: a launch may land meanwhile.)
            again = (
                self.leases.shared
                and status == "waiting_for_input"
                and await self.queries.run_status(run_id) == "running"
            ) or run_id in self._relaunch
            if not (again and self.accepting and await self.claim(run_id)):
                return

    async def _run(
        self,
        run_id: str,
        resumed: bool,
        reason: str = "restart",
        given: list[RecordedEvent] | None = None,
    ) -> str | None:
        """One pass over the run from its log (the first attempt from ``given``, when the
        caller has the run's events); returns its status as the pass left it."""
        interrupted = False
        for _attempt in range(_TASK_ATTEMPTS):
            try:
                # The executor starts from these events; if another append lands before its
                # own first one, that append's guard fails and the pass starts over here.
                if given is not None:
                    events, given = given, None
                else:
                    events = await read_run(self.store, run_id)
                if not events:
                    return None
                executor = await self._executor(events[0], resumed, interrupted, reason)
                if executor is None:
                    return None
                self._executors[run_id] = executor
                await executor.execute(await self._history(events[0]), events)
                status = executor.state.status if executor.state else None
                logs.info(log, "run.step_done", status=status)
                return status
            except asyncio.CancelledError:
                if run_id in self._ended_elsewhere:
                    return None  # cancelled (or ended) through another process
                if run_id in self._cancelled_by:
                    current = self._executors.get(run_id)
                    if current is not None:
                        await current.record_cancel(self._cancelled_by[run_id])
                    return None
                raise  # shutdown or a lost lease: leave the run resumable
            except ConcurrencyError:
                # Someone else appended (a cancel while we had no task, another process that
                # took the run over): if the run is still ours, start over from the log, which
                # decides whether there is anything left to do; if not, stop.
                if self.leases.shared and not await self.leases.acquire(run_id):
                    log.warning("run.lease_lost", run_id=run_id)
                    self._leased_at.pop(run_id, None)
                    self._lost.add(run_id)
                    return None
                resumed, interrupted = False, True
                continue
            except StorageUnavailable as exc:
                # The log stayed unwritable for storage_retry_s: fail the run (once it can be
                # written) rather than hold its thread and its org's live-run slot.
                log.error("run.storage_failed", error=str(exc))
                await self._fail(
                    run_id,
                    "internal.storage",
                    f"the log could not be written for {self.storage_retry_s:g} s",
                )
                return None
            except Exception as exc:
                log.exception("run.crashed")
                await self._fail(run_id, "internal.error", f"internal error: {type(exc).__name__}")
                return None
        # Other appends kept winning the race for the run's stream: leave the run as the
        # log has it (a later input, cancel or restart picks it up) and say so.
        log.error("run.gave_up", reason="concurrent appends", attempts=_TASK_ATTEMPTS)
        return None

    async def _executor(
        self, first: RecordedEvent, resumed: bool, interrupted: bool, reason: str = "restart"
    ) -> RunExecutor | None:
        started = decode_event(first)
        assert isinstance(started, RunStarted)
        run_id = started.run_id
        route = self.routes.routes.get(started.route_id)
        persona: Persona | None = self.personas.by_id.get(started.persona_id or DEFAULT_PERSONA_ID)
        if route is None or persona is None:
            await self._fail(
                run_id,
                "policy.route_not_found" if route is None else "validation.persona_not_found",
                "the run's route or persona is no longer configured",
            )
            return None
        return RunExecutor(
            store=self.store,
            run_id=run_id,
            route=route,
            persona=persona,
            provider=self.provider_for(route),
            tools=self.tools,
            coalesce_s=self.coalesce_s,
            resumed=resumed,
            interrupted=interrupted,
            storage_retry_s=self.storage_retry_s,
            process=self.process,
            resume_reason=reason,
        )

    async def _history(self, first: RecordedEvent) -> list[dict[str, Any]]:
        """The thread's conversation before the run started (consecutive roles merged)."""
        started = decode_event(first)
        assert isinstance(started, RunStarted)
        rows = await self.queries.messages(started.thread_id, 10_000, first.position)
        history: list[dict[str, Any]] = []
        for row in rows:
            if history and history[-1]["role"] == row["role"]:
                history[-1]["content"] += "\n\n" + row["content"]
            else:
                history.append({"role": row["role"], "content": row["content"]})
        return history

    async def _fail(self, run_id: str, error_class: str, message: str) -> None:
        failed = RunFailed(error_class=error_class, message=message)
        self._ending.add(run_id)
        await while_unwritable(
            lambda: append_decided(self.store, run_id, lambda s: [] if s.terminal else [failed])
        )

    # -- cancel -----------------------------------------------------------------------------

    async def cancel(self, run_id: str, user_id: str | None) -> None:
        """Stop the run and record ``run.cancelled``; returns once it is in the log."""
        task = self.tasks.get(run_id)
        if task is not None and not task.done():
            self._cancelled_by[run_id] = user_id
            task.cancel()
            await asyncio.wait([task])
        # No task (waiting for input, not started yet, or the task just ended): append here,
        # guarded by the run's seq.
        await append_decided(self.store, run_id, lambda state: decide_cancel(state, user_id))

    # -- shutdown ---------------------------------------------------------------------------

    async def shutdown(self, grace_s: float) -> None:
        """Stop intake, stop every task (runs stay resumable), wait at most ``grace_s`` seconds,
        then let every lease go at once, so another process takes the runs over now rather
        than after ``lease_seconds``."""
        self.accepting = False
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        background, self._background = self._background, []
        for task in background:
            task.cancel()
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if tasks or background:
            await asyncio.wait([*tasks, *background], timeout=grace_s)
        self._leased_at.clear()
        with contextlib.suppress(Exception):
            await self.leases.release_all()
