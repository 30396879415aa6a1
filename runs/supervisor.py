"""One asyncio task per live run: launch, cancel, resume, shut down.

See docs/architecture.md, "Execution".

A run has a task only while it works. A run waiting for input has none (no task, no timer
that could expire it): the input handler appends to its log and launches it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from eventstore import ConcurrencyError, EventStore, RecordedEvent, StorageUnavailable
from projections.queries import Queries
from runs.config import Route
from runs.events import RunFailed, RunStarted, decode_event, run_stream
from runs.executor import RunExecutor
from runs.personas import DEFAULT_PERSONA_ID, Persona, PersonaRegistry
from runs.providers.base import Provider
from runs.repository import append_decided, while_unwritable
from runs.routes import RouteTable
from runs.run import decide_cancel
from runs.tools import ToolRegistry

__all__ = ["Supervisor"]

log = structlog.get_logger("runlog.supervisor")

ProviderFactory = Callable[[Route], Provider]

#: How often a run's task starts over from the log after losing a race for its stream.
_TASK_ATTEMPTS = 3


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
    ) -> None:
        self.storage_retry_s = storage_retry_s
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
        self.accepting = True

    # -- launching --------------------------------------------------------------------------

    def launch(self, run_id: str, *, resumed: bool = False) -> None:
        """Start (or continue) a run's task. If it still has one (finishing the step that
        ended in a wait, say), it is launched again when that task ends: the new task reads
        the log, so a launch is never lost and never doubled."""
        if not self.accepting:
            return
        if run_id in self.tasks:
            self._relaunch.add(run_id)
            return
        task = asyncio.create_task(self._run(run_id, resumed), name=f"run-{run_id}")
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
            if run_id in self._relaunch:
                self._relaunch.discard(run_id)
                if not task.cancelled():
                    self.launch(run_id)

    async def resume_all(self) -> list[str]:
        """Continue every run the log says is running (after a restart or a crash)."""
        run_ids = await self.queries.runs_with_status("running")
        for run_id in run_ids:
            self.launch(run_id, resumed=True)
        if run_ids:
            log.info("runs.resumed", count=len(run_ids))
        return run_ids

    async def _run(self, run_id: str, resumed: bool) -> None:
        structlog.contextvars.bind_contextvars(run_id=run_id)
        interrupted = False
        for _attempt in range(_TASK_ATTEMPTS):
            try:
                first = await self.store.read_stream(run_stream(run_id), 0, 1)
                if not first:
                    return
                executor = await self._executor(first[0], resumed, interrupted)
                if executor is None:
                    return
                self._executors[run_id] = executor
                await executor.execute(await self._history(first[0]))
                log.info("run.step_done", status=executor.state and executor.state.status)
                return
            except asyncio.CancelledError:
                if run_id in self._cancelled_by:
                    executor = self._executors.get(run_id)
                    if executor is not None:
                        await executor.record_cancel(self._cancelled_by[run_id])
                    return
                raise  # shutdown: leave the run resumable
            except ConcurrencyError:
                # Someone else appended (a cancel while we had no task, say): start over from
                # the log, which decides whether there is anything left to do.
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
                return
            except Exception as exc:
                log.exception("run.crashed")
                await self._fail(run_id, "internal.error", f"internal error: {type(exc).__name__}")
                return
        # Other appends kept winning the race for the run's stream: leave the run as the
        # log has it (a later input, cancel or restart picks it up) and say so.
        log.error("run.gave_up", reason="concurrent appends", attempts=_TASK_ATTEMPTS)

    async def _executor(
        self, first: RecordedEvent, resumed: bool, interrupted: bool
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
        """Stop intake, stop every task (runs stay resumable), wait at most ``grace_s`` seconds."""
        self.accepting = False
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
