"""Rebuild a run's conversation from its events, so that a run continues from its log alone
(after input, after a restart) and never repeats a completed model call or tool result."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import msgspec

from eventstore import RecordedEvent
from runs.events import (
    DomainEvent,
    MessageDelta,
    RunInputProvided,
    RunRetried,
    RunUsage,
    RunWaitingForInput,
    ToolCalled,
    ToolResult,
    decode_event,
)

__all__ = ["Transcript", "Turn", "build_transcript"]


class Turn(msgspec.Struct):
    """One model call: what the assistant said and the tools it asked for."""

    call: int
    text: str = ""
    tool_calls: list[ToolCalled] = []
    finished: bool = False  # its run.usage is in the log: the call completed


class Transcript(msgspec.Struct):
    turns: list[Turn] = []
    results: dict[str, ToolResult] = {}
    inputs: dict[str, str] = {}  # tool_call_id -> the user's answer
    waiting_for: set[str] = set()  # tool_call_ids with an open input request
    last_call: int = 0

    @property
    def text(self) -> str:
        """Everything the assistant said in the run (calls that were replaced excluded)."""
        return "".join(turn.text for turn in self.turns)

    @property
    def completed_calls(self) -> int:
        return sum(1 for turn in self.turns if turn.finished)

    def pending_tool_calls(self) -> list[ToolCalled]:
        """Tool calls of finished turns that have no result yet, in order."""
        return [
            call
            for turn in self.turns
            if turn.finished
            for call in turn.tool_calls
            if call.tool_call_id not in self.results
        ]

    def unfinished_call(self) -> Turn | None:
        """A model call whose output started streaming but that never completed (a crash)."""
        if self.turns and not self.turns[-1].finished:
            return self.turns[-1]
        return None

    def messages(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The Messages API conversation: the thread's history, then the run's turns."""
        messages = list(history)
        for turn in self.turns:
            if not turn.finished:
                continue
            content: list[dict[str, Any]] = []
            if turn.text:
                content.append({"type": "text", "text": turn.text})
            content.extend(
                {
                    "type": "tool_use",
                    "id": call.tool_call_id,
                    "name": call.name,
                    "input": call.arguments,
                }
                for call in turn.tool_calls
            )
            if content:
                messages.append({"role": "assistant", "content": content})
            results = [
                {
                    "type": "tool_result",
                    "tool_use_id": result.tool_call_id,
                    "content": result.output,
                    "is_error": result.is_error,
                }
                for call in turn.tool_calls
                if (result := self.results.get(call.tool_call_id)) is not None
            ]
            if results:
                messages.append({"role": "user", "content": results})
        return messages


def build_transcript(
    events: Iterable[RecordedEvent], then: Iterable[DomainEvent] = ()
) -> Transcript:
    """The conversation of a run's recorded ``events``, followed by ``then``: events about to
    be appended after them."""
    transcript = Transcript()
    by_call: dict[int, Turn] = {}
    discarded: set[int] = set()
    request_to_call: dict[str, str] = {}

    def turn(call: int) -> Turn:
        if call not in by_call:
            by_call[call] = Turn(call=call)
        transcript.last_call = max(transcript.last_call, call)
        return by_call[call]

    for event in itertools.chain(map(decode_event, events), then):
        match event:
            case MessageDelta():
                turn(event.call).text += event.content
            case ToolCalled():
                turn(event.call).tool_calls.append(event)
            case RunUsage():
                cut_or_done = turn(event.call)
                # An estimated usage belongs to a call that was cut: it never completed.
                if not event.estimated:
                    cut_or_done.finished = True
            case RunRetried():
                discarded.add(event.discarded_call)
                transcript.last_call = max(transcript.last_call, event.call - 1)
            case ToolResult():
                transcript.results[event.tool_call_id] = event
                transcript.waiting_for.discard(event.tool_call_id)
            case RunWaitingForInput():
                if event.tool_call_id is not None:
                    request_to_call[event.request_id] = event.tool_call_id
                    transcript.waiting_for.add(event.tool_call_id)
            case RunInputProvided():
                call_id = request_to_call.get(event.request_id)
                if call_id is not None:
                    transcript.inputs[call_id] = event.content
                    transcript.waiting_for.discard(call_id)
            case _:
                pass
    transcript.turns = [by_call[c] for c in sorted(by_call) if c not in discarded]
    return transcript
