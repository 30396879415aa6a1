"""A run's stream as a repository: read it, fold it, decide, append guarded by its seq.

Every command on an existing run (cancel, input, failure, the executor's own steps) has the
same shape: fold the run's events into its state, decide new events from that state, and
append them with ``expected_seq`` = the state's seq, so a concurrent append makes ours fail
rather than interleave. On such a conflict the fold and the decision are simply done again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import structlog

from eventstore import ConcurrencyError, EventStore, RecordedEvent, StorageUnavailable
from runs.events import DomainEvent, encode_event, run_stream
from runs.run import RunState, fold_recorded

__all__ = ["CONFLICT_ATTEMPTS", "append_decided", "load_run", "read_run", "while_unwritable"]

T = TypeVar("T")

log = structlog.get_logger("runlog.repository")

#: How many times a fold-decide-append is retried when other appends keep winning the race.
CONFLICT_ATTEMPTS = 10
_PAGE = 1000
#: Delays between attempts while the log cannot be written: from the first to the largest.
_FIRST_DELAY_S, _MAX_DELAY_S = 0.05, 2.0


async def read_run(store: EventStore, run_id: str) -> list[RecordedEvent]:
    """Every recorded event of a run, in seq order."""
    events: list[RecordedEvent] = []
    while True:
        batch = await store.read_stream(run_stream(run_id), len(events), _PAGE)
        events.extend(batch)
        if len(batch) < _PAGE:
            return events


async def load_run(store: EventStore, run_id: str) -> RunState | None:
    """The run's current state (``None`` when the run does not exist)."""
    return fold_recorded(await read_run(store, run_id))


async def append_decided(
    store: EventStore,
    run_id: str,
    decide: Callable[[RunState], Sequence[DomainEvent]],
    attempts: int = CONFLICT_ATTEMPTS,
) -> list[RecordedEvent]:
    """Fold the run, decide events from its state, append them guarded by its seq; on a
    concurrent append, fold and decide again. Returns what was appended (``[]`` when the
    run does not exist or ``decide`` chose nothing). ``decide`` may raise to refuse.

    Gives up after ``attempts`` conflicts, logging it, and returns ``[]``.
    """
    for _ in range(attempts):
        state = await load_run(store, run_id)
        decided = [] if state is None else list(decide(state))
        if state is None or not decided:
            return []
        try:
            return await store.append(
                run_stream(run_id), [encode_event(e) for e in decided], state.seq
            )
        except ConcurrencyError:
            continue
    log.warning("run.append_gave_up", run_id=run_id, attempts=attempts)
    return []


async def while_unwritable(
    attempt: Callable[[], Awaitable[T]], *, give_up_after_s: float | None = None
) -> T:
    """``attempt()`` again, with growing delays, while the log cannot be written (disk full,
    I/O error): nothing of a failed attempt was written, so repeating it is safe (its
    ``expected_seq`` still guards it). Raises the last :class:`StorageUnavailable` after
    ``give_up_after_s`` seconds (never, with ``None``). Cancellation ends the wait."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    delay = _FIRST_DELAY_S
    failures = 0
    while True:
        try:
            return await attempt()
        except StorageUnavailable as exc:
            failures += 1
            if give_up_after_s is not None and loop.time() - started >= give_up_after_s:
                raise
            log.warning("run.append_waiting", failures=failures, retry_in_s=delay, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)
