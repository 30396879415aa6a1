"""The agent loop of one run: model call → deltas → tools → next call.

See docs/architecture.md, "Execution".

The executor is the only writer of its run's stream while it lives. Every step starts from
the log: the state is the fold of the run's events and the conversation is rebuilt from them,
so a run continues after input or after a restart without repeating completed work.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog

from eventstore import AppendRequest, EventStore, RecordedEvent
from eventstore.inbox import Inbox
from runs import metrics
from runs.config import Route
from runs.estimate import BYTES_PER_TOKEN, estimate_request_tokens, estimate_tokens
from runs.events import (
    DomainEvent,
    MessageAdded,
    MessageDelta,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunRetried,
    RunUsage,
    RunWaitingForInput,
    ToolCalled,
    ToolResult,
    encode_event,
    run_stream,
    thread_stream,
)
from runs.ids import new_id
from runs.personas import Persona
from runs.providers.base import (
    ModelRequest,
    Provider,
    ProviderError,
    Stop,
    TextDelta,
    ToolUse,
    Usage,
)
from runs.repository import append_decided, while_unwritable
from runs.run import RunState, decide_cancel, evolve, fold_recorded
from runs.tools import ASK_USER, ToolError, ToolRegistry, persona_allows
from runs.transcript import Transcript, build_transcript

__all__ = ["RunExecutor"]

log = structlog.get_logger("runlog.run")

_END = object()
_json = msgspec.json.Encoder()
_MAX_RETRY_AFTER_S = 60.0


class _Stopped(Exception):
    """The run reached a terminal state or now waits for input: the task ends."""


def _folded(state: RunState, events: Sequence[DomainEvent]) -> RunState:
    """``state`` with ``events`` folded in as though appended next."""
    for event in events:
        state = evolve(state, event, state.seq + 1, "")
    return state


class RunExecutor:
    def __init__(
        self,
        *,
        store: EventStore,
        run_id: str,
        route: Route,
        persona: Persona,
        provider: Provider,
        tools: ToolRegistry,
        coalesce_s: float,
        resumed: bool = False,
        interrupted: bool = False,
        storage_retry_s: float = 600.0,
        process: str | None = None,
        resume_reason: str = "restart",
    ) -> None:
        self.store = store
        self.process = process
        self.resume_reason = resume_reason
        #: Set while the executor appends its run's terminal event (so a watcher of commits
        #: does not take that event for one appended elsewhere).
        self.ending = False
        self.storage_retry_s = storage_retry_s
        self.run_id = run_id
        self.stream = run_stream(run_id)
        self.route = route
        self.persona = persona
        self.provider = provider
        self.tools = tools
        self.coalesce_s = coalesce_s
        self.resumed = resumed
        # After a crash (or a lost append) a pending tool call may already have run.
        self.interrupted = resumed or interrupted
        self.state: RunState | None = None
        #: The run's events: those the pass began from and those it appended since.
        self.events: list[RecordedEvent] = []
        self.call_usage: Usage | None = None  # usage of the call in flight, as reported
        self.call_number = 0
        # The call in flight: the request sent (None when no call is in flight), whether the
        # provider answered at all and finished its answer, and the bytes of output it
        # streamed (for an estimate).
        self.call_request: ModelRequest | None = None
        self.call_answered = False
        self.call_finished = False
        self.call_output = 0
        self.running_tool_call: str | None = None  # the tool call whose tool runs now
        self._fresh_tool_calls: set[str] = set()

    # -- appends ----------------------------------------------------------------------------

    async def append(self, *events: DomainEvent, thread: Sequence[DomainEvent] = ()) -> None:
        """Append to the run (and atomically to its thread), checking each transition first."""
        state = self.state
        assert state is not None
        checked = _folded(state, events)  # raises InvalidTransition before anything is written
        if checked.terminal:
            self.ending = True
        requests = [AppendRequest(self.stream, [encode_event(e) for e in events], state.seq)]
        if thread:
            requests.append(
                AppendRequest(
                    thread_stream(state.thread_id), [encode_event(e) for e in thread], None
                )
            )
        # Shielded: if the task is cancelled meanwhile the append still completes, and the
        # cancel handler re-reads the log rather than trusting our local state. While the log
        # cannot be written the same append is tried again (the run keeps its place), for
        # ``storage_retry_s`` at most.
        recorded = await while_unwritable(
            lambda: asyncio.shield(self.store.submit_many(requests)),
            give_up_after_s=self.storage_retry_s,
        )
        # Fold what we just wrote (the typed events, with the seqs and times the log gave).
        for event, written in zip(events, recorded, strict=False):
            state = evolve(state, event, written.seq, written.created_at)
        self.state = state
        self.events += recorded[: len(events)]  # the run's, as the log holds them

    # -- the loop ---------------------------------------------------------------------------

    async def execute(self, history: list[dict[str, Any]], events: list[RecordedEvent]) -> None:
        """Run until the run is terminal or waits for input, from ``events`` (the run's, just
        read from the log). ``history`` is the thread's conversation before the run started."""
        self.events = list(events)
        self.state = fold_recorded(self.events)
        if self.state is None or self.state.terminal or self.state.status != "running":
            return
        if self.resumed:
            await self.append(
                RunResumed(from_seq=self.state.seq, reason=self.resume_reason, process=self.process)
            )
        transcript = build_transcript(self.events)
        try:
            while True:
                # Every step starts from the run's events as the log holds them, so a resumed
                # run and a live one take the same path: results first, then either the answer
                # is complete or the model is called again. They are the events the pass read
                # and those it appended since, with no read of the log between steps: every
                # append is guarded by the run's last seq, so an event appended elsewhere
                # (another process, a cancel) fails the next append, and the pass starts over
                # from the log (runs/supervisor.py).
                if await self._resolve_tool_calls(transcript):
                    transcript = build_transcript(self.events)
                last = transcript.turns[-1] if transcript.turns else None
                if last is not None and last.finished and not last.tool_calls:
                    await self._complete(transcript)
                    return
                if transcript.completed_calls >= self.persona.max_iterations:
                    await self._fail(
                        "budget.max_iterations",
                        f"the run reached max_iterations ({self.persona.max_iterations})"
                        f" of persona {self.persona.persona_id}",
                    )
                await self._model_call(transcript, history)
                transcript = build_transcript(self.events)
        except _Stopped:
            return

    async def _complete(self, transcript: Transcript, *before: DomainEvent) -> None:
        """``before`` (if any), ``run.completed`` and the assistant's message on the thread,
        in one append. ``transcript`` is the run's, ``before`` included."""
        assert self.state is not None
        message_id = new_id()
        await self.append(
            *before,
            RunCompleted(message_id=message_id),
            thread=[
                MessageAdded(
                    message_id=message_id,
                    thread_id=self.state.thread_id,
                    org_id=self.state.org_id,
                    role="assistant",
                    content=transcript.text,
                    run_id=self.run_id,
                )
            ],
        )

    async def _fail(self, error_class: str, message: str, *before: DomainEvent) -> None:
        await self.append(*before, RunFailed(error_class=error_class, message=message))
        raise _Stopped

    def _cut_usage(self) -> list[DomainEvent]:
        """A ``run.usage`` marked estimated for the call in flight, cut before its end: the
        figures the provider reported so far, the rest estimated (input from the request
        sent, output from what was streamed). Nothing if the provider never answered: a
        request refused or never received is not billed."""
        request, self.call_request = self.call_request, None
        reported, self.call_usage = self.call_usage, None
        if request is None or not self.call_answered:
            return []
        if self.call_finished and reported is not None:
            # Cut after the provider's last word (before it was appended): nothing to estimate.
            return [self._usage_event(reported)]
        output = math.ceil(self.call_output / BYTES_PER_TOKEN)
        if reported is None:
            usage = Usage(input_tokens=estimate_request_tokens(request), output_tokens=output)
        else:
            usage = msgspec.structs.replace(
                reported, output_tokens=max(reported.output_tokens, output)
            )
        return [self._usage_event(usage, estimated=True)]

    # -- model calls ------------------------------------------------------------------------

    async def _model_call(self, transcript: Transcript, history: list[dict[str, Any]]) -> None:
        """One model call, retried on retryable provider errors."""
        assert self.state is not None
        unfinished = transcript.unfinished_call()
        self.call_number = transcript.last_call + 1
        # The request is rebuilt from the log alone, so after a restart it is the very
        # request the interrupted call sent (its partial output is not part of it).
        request = ModelRequest(
            model=self.route.model,
            system=self.persona.system_prompt,
            messages=transcript.messages(history),
            tools=[t.spec() for t in await self.tools.offered(self.persona.tools)],
            max_tokens=self.persona.max_output_tokens,
            temperature=self.persona.temperature,
        )
        if unfinished is not None:
            # Output of an interrupted call streamed before a crash: say it is replaced, and
            # bill what it probably used (its reported usage was lost with the process).
            spent: list[DomainEvent] = []
            if unfinished.call not in self.state.reported_calls | set(self.state.estimates):
                usage = Usage(
                    input_tokens=estimate_request_tokens(request),
                    output_tokens=estimate_tokens(unfinished.text),
                )
                spent.append(self._usage_event(usage, call=unfinished.call, estimated=True))
            await self.append(
                *spent,
                RunRetried(
                    call=self.call_number,
                    discarded_call=unfinished.call,
                    attempt=1,
                    reason="interrupted by a restart",
                ),
            )
        attempt = 1
        while True:
            try:
                tool_uses, stop, rest = await self._stream_call(request)
                break
            except ProviderError as exc:
                metrics.PROVIDER_ERRORS.labels(self.route.id, exc.error_class).inc()
                # Tokens the failed attempt already used are billed, like any call's.
                spent = self._cut_usage()
                if not exc.retryable or attempt >= self.route.max_attempts:
                    await self._fail(exc.error_class, exc.message, *spent)
                metrics.PROVIDER_RETRIES.labels(self.route.id).inc()
                delay = self.route.retry_base_delay_s * (2 ** (attempt - 1))
                if exc.retry_after_s is not None:
                    delay = max(delay, min(exc.retry_after_s, _MAX_RETRY_AFTER_S))
                attempt += 1
                discarded = self.call_number
                self.call_number += 1
                await self.append(
                    *spent,
                    RunRetried(
                        call=self.call_number,
                        discarded_call=discarded,
                        attempt=attempt,
                        reason=f"{exc.error_class}: {exc.message}"[:500],
                        delay_ms=round(delay * 1000),
                    ),
                )
                await asyncio.sleep(delay)
        calls = [
            ToolCalled(
                tool_call_id=use.id, name=use.name, arguments=use.input, call=self.call_number
            )
            for use in tool_uses
        ]
        self._fresh_tool_calls.update(c.tool_call_id for c in calls)
        ended = [*rest, self._usage_event(self.call_usage or Usage()), *calls]
        if stop.reason == "max_tokens":
            log.info("run.max_tokens", run_id=self.run_id)
        limit = self.persona.max_cost_usd
        if not calls and (limit is None or _folded(self.state, ended).total_cost_usd <= limit):
            # An answer with no tool calls, within the budget: the next step would complete
            # the run, so the call's end and the completion are one append (one commit and
            # one wake-up of the run's followers fewer, and nothing for a crash to separate).
            await self._complete(build_transcript(self.events, ended), *ended)
            self.call_usage = self.call_request = None
            raise _Stopped
        # The call's last text, its usage and the tool calls in one append: a crash cannot
        # separate a finished call from the tools it asked for.
        await self.append(*ended)
        self.call_usage = self.call_request = None
        if limit is not None and self.state.total_cost_usd > limit:
            await self._fail(
                "budget.cost_exceeded",
                f"the run cost {self.state.total_cost_usd:.6f} USD, over the persona's"
                f" max_cost_usd of {limit}",
            )

    def _usage_event(
        self, usage: Usage, *, call: int | None = None, estimated: bool = False
    ) -> RunUsage:
        usage = _clamped(usage)
        return RunUsage(
            model=self.route.model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cost_usd=self.route.cost_usd(
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_write_tokens,
                usage.cache_read_tokens,
            ),
            call=call or max(self.call_number, 1),
            estimated=estimated,
        )

    async def _stream_call(
        self, request: ModelRequest
    ) -> tuple[list[ToolUse], Stop, list[MessageDelta]]:
        """Stream one attempt, appending coalesced deltas. The provider runs in its own task
        feeding an :class:`eventstore.inbox.Inbox`, so the coalescing timer never interrupts the
        provider's stream. The text still buffered when the call ends is returned (as its
        delta), for the caller to append with the call's usage: one commit fewer per call."""
        channel = Inbox()
        self.call_request = request
        self.call_answered = self.call_finished = False
        self.call_output = 0

        async def produce() -> None:
            try:
                async for item in self.provider.stream(request):
                    channel.put(item)
                channel.put(_END)
            except BaseException as exc:
                channel.put(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

        producer = asyncio.create_task(produce(), name=f"provider-{self.run_id}")
        tool_uses: list[ToolUse] = []
        stop = Stop("end_turn")
        buffer: list[str] = []
        next_flush = 0.0
        self.call_usage = None
        route, model = self.route.id, self.route.model
        call_seconds = metrics.labeled(metrics.PROVIDER_CALL_SECONDS, route, model)
        first_token_seconds = metrics.labeled(metrics.PROVIDER_TTFT_SECONDS, route, model)
        started = time.monotonic()
        waiting_for_first = True
        coalescing = self.coalesce_s > 0
        items = channel.items
        try:
            while True:
                if not items:
                    # With text buffered, wait no later than its flush is due.
                    await channel.wait(next_flush if buffer else None)
                item: Any = items.popleft() if items else None  # None: the flush is due
                kind: type | None = type(item)
                if kind is TextDelta:
                    buffer.append(item.text)
                    self.call_output += len(item.text.encode("utf-8", "surrogatepass"))
                elif kind is ToolUse:
                    tool_uses.append(item)
                    self.call_output += len(_json.encode(item.input)) + len(item.name)
                elif kind is Usage:
                    self.call_usage = _merge_usage(self.call_usage, item)
                elif kind is Stop:
                    stop = item
                elif item is _END:
                    call_seconds.observe(time.monotonic() - started)
                    self.call_finished = True
                    rest = [self._delta(buffer)] if buffer else []
                    return tool_uses, stop, rest
                elif isinstance(item, BaseException):
                    call_seconds.observe(time.monotonic() - started)
                    await self._flush(buffer)
                    raise item
                else:
                    kind = None  # the flush is due
                if kind is not None:
                    self.call_answered = True
                    if waiting_for_first and (kind is TextDelta or kind is ToolUse):
                        waiting_for_first = False
                        first_token_seconds.observe(time.monotonic() - started)
                # A flush that is due waits until the items already received are taken in
                # (none can arrive meanwhile: the provider's task runs only when this one
                # waits), so text that arrived together goes out as one delta, the first one
                # included. Without a window each item is a delta of its own.
                if (
                    buffer
                    and (item is None or time.monotonic() >= next_flush)
                    and (not items or not coalescing)
                ):
                    await self._flush(buffer)
                    next_flush = time.monotonic() + self.coalesce_s
        finally:
            if not producer.done():
                producer.cancel()  # aborts the provider's HTTP request
                await asyncio.gather(producer, return_exceptions=True)

    async def _flush(self, buffer: list[str]) -> None:
        if buffer:
            await self.append(self._delta(buffer))

    def _delta(self, buffer: list[str]) -> MessageDelta:
        """The buffered text as one delta (the buffer is emptied)."""
        text = "".join(buffer)
        buffer.clear()
        return MessageDelta(content=text, call=self.call_number)

    # -- tools ------------------------------------------------------------------------------

    async def _resolve_tool_calls(self, transcript: Transcript) -> bool:
        """Give every pending tool call a result, or stop to wait for the user's input.
        Returns whether anything was appended."""
        pending = transcript.pending_tool_calls()
        for call in pending:
            needs_input = call.name == ASK_USER or persona_allows(
                self.persona.confirm_tools, call.name
            )
            if needs_input and call.tool_call_id not in transcript.inputs:
                if call.tool_call_id not in transcript.waiting_for:
                    await self._ask(call)
                raise _Stopped
            await self.append(await self._tool_result(call, transcript))
        return bool(pending)

    async def _ask(self, call: ToolCalled) -> None:
        if call.name == ASK_USER:
            question = call.arguments.get("question")
            event = RunWaitingForInput(
                request_id=new_id(),
                kind="question",
                prompt=question if isinstance(question, str) else json.dumps(call.arguments),
                tool_call_id=call.tool_call_id,
                tool_name=call.name,
            )
        else:
            event = RunWaitingForInput(
                request_id=new_id(),
                kind="confirmation",
                prompt=f"Allow the tool {call.name!r} to run with these arguments?"
                " Answer 'approve' or 'deny'.",
                tool_call_id=call.tool_call_id,
                tool_name=call.name,
                arguments=call.arguments,
            )
        await self.append(event)

    async def _tool_result(self, call: ToolCalled, transcript: Transcript) -> ToolResult:
        answer = transcript.inputs.get(call.tool_call_id)

        def result(output: str, is_error: bool = False) -> ToolResult:
            return ToolResult(
                tool_call_id=call.tool_call_id, name=call.name, output=output, is_error=is_error
            )

        if call.name == ASK_USER:
            return result(answer or "")
        if answer == "deny":
            return result("the user denied this tool call", is_error=True)
        allowed = persona_allows(self.persona.tools, call.name)
        tool = await self.tools.resolve(call.name) if allowed else None
        if tool is None or tool.run is None:
            return result(f"unknown tool {call.name!r}", is_error=True)
        if (
            self.interrupted
            and call.tool_call_id not in self._fresh_tool_calls
            and not tool.safe_to_repeat
        ):
            # The call was made before a restart and may have run: never repeat it silently.
            return result(
                "the tool call was interrupted by a service restart and may or may not have"
                " taken effect; it was not repeated",
                is_error=True,
            )
        # Cleared only when the tool returns: a cancel that cuts it leaves its id here, and
        # the cancel receipt reports it as interrupted.
        self.running_tool_call = call.tool_call_id
        try:
            output = await asyncio.wait_for(tool.run(dict(call.arguments)), tool.timeout_s)
        except TimeoutError:
            outcome = result(f"the tool timed out after {tool.timeout_s:g} s", is_error=True)
        except ToolError as exc:
            outcome = result(str(exc), is_error=True)
        except Exception as exc:
            log.warning("tool.crashed", run_id=self.run_id, tool=call.name, error=repr(exc))
            outcome = result(f"the tool failed: {type(exc).__name__}", is_error=True)
        else:
            outcome = result(output)
        self.running_tool_call = None
        return outcome

    # -- cancellation -----------------------------------------------------------------------

    async def record_cancel(self, user_id: str | None) -> None:
        """Append the cancellation from a fresh read of the log: the receipt of its tool calls
        (the one running was interrupted) and, for a model call cut mid-way, its usage."""
        spent = self._cut_usage()
        running = [self.running_tool_call] if self.running_tool_call else []

        def decide(state: RunState) -> list[DomainEvent]:
            cancel = decide_cancel(state, user_id, running)
            if not cancel:
                return []
            # The call may have ended (its reported usage appended) as the cancel arrived.
            cut = [u for u in spent if getattr(u, "call", None) not in state.reported_calls]
            return [*cut, *cancel]

        self.ending = True
        await while_unwritable(lambda: append_decided(self.store, self.run_id, decide))


#: The largest token count recorded for one call: exact in JSON numbers everywhere (2^53 - 1),
#: and far below what the projections' 64-bit sums can hold. A provider that reports more (or
#: a negative count) is recorded at the bound, and the clamp is logged.
MAX_TOKENS = 2**53 - 1


def _clamped(usage: Usage) -> Usage:
    counts = (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_write_tokens,
        usage.cache_read_tokens,
    )
    if all(0 <= n <= MAX_TOKENS for n in counts):
        return usage
    log.warning("run.usage_clamped", reported=[str(n) for n in counts])
    input_tokens, output_tokens, cache_write, cache_read = (
        min(max(n, 0), MAX_TOKENS) for n in counts
    )
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_write_tokens=cache_write,
        cache_read_tokens=cache_read,
    )


def _merge_usage(known: Usage | None, new: Usage) -> Usage:
    """Providers report usage cumulatively (input at the start, output at the end)."""
    if known is None:
        return new
    return Usage(
        input_tokens=max(known.input_tokens, new.input_tokens),
        output_tokens=max(known.output_tokens, new.output_tokens),
        cache_write_tokens=max(known.cache_write_tokens, new.cache_write_tokens),
        cache_read_tokens=max(known.cache_read_tokens, new.cache_read_tokens),
    )
