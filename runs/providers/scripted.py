"""The ``scripted`` provider: deterministic and offline, for development and tests.

It answers the last user message. Directives, each on a line of its own:

- ``/slow MS``: one delta every MS milliseconds (paced from the first, so a busy event loop
  delays deltas without lowering their rate, up to :data:`CATCH_UP_DELTAS` behind);
- ``/fail``: the call raises (the run ends with ``provider.error``);
- ``/tool NAME {json}``: call tool NAME with those arguments, then reply
  ``tool NAME returned: <output>``;
- ``/ask TEXT``: call ``ask_user`` with TEXT, then reply ``you answered: <input>``;
- ``/cache N``: report N cache-read tokens.

Without a tool directive the reply is ``echo: <text>`` (the text without directive lines).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from runs.providers.base import (
    ModelRequest,
    ProviderError,
    ProviderEvent,
    Stop,
    TextDelta,
    ToolUse,
    Usage,
)

__all__ = ["ScriptedProvider", "parse_directives"]

CHUNK = 4
#: How many deltas ``/slow`` may fall behind its pace before it stops catching up.
CATCH_UP_DELTAS = 10


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict))


def parse_directives(text: str) -> tuple[dict[str, str], str]:
    """Directive lines (``/name args``) and the remaining text."""
    directives: dict[str, str] = {}
    rest: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("/") and len(stripped) > 1:
            name, _, args = stripped[1:].partition(" ")
            if name in {"slow", "fail", "tool", "ask", "cache"}:
                directives[name] = args.strip()
                continue
        rest.append(line)
    return directives, "\n".join(rest).strip()


class ScriptedProvider:
    def __init__(self, tool_call_prefix: str = "call") -> None:
        self._prefix = tool_call_prefix

    async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        user_turns = [m for m in request.messages if m["role"] == "user"]
        last = user_turns[-1] if user_turns else {"content": ""}
        tool_results = (
            [b for b in last["content"] if b.get("type") == "tool_result"]
            if isinstance(last["content"], list)
            else []
        )
        # The instruction is the last user message that is not a tool result.
        prompt = next(
            (
                _text_of(m["content"])
                for m in reversed(user_turns)
                if not (
                    isinstance(m["content"], list)
                    and any(b.get("type") == "tool_result" for b in m["content"])
                )
            ),
            "",
        )
        directives, text = parse_directives(prompt)
        if "fail" in directives:
            raise ProviderError("provider.error", "scripted provider failure (/fail)")
        try:
            delay = max(0.0, float(directives.get("slow", "0")) / 1000)
        except ValueError:
            delay = 0.0
        cache_read = int(directives["cache"]) if directives.get("cache", "").isdigit() else 0
        input_tokens = sum(len(_text_of(m["content"]).split()) for m in request.messages)

        if tool_results:
            result = tool_results[-1]
            output = _text_of(result.get("content", ""))
            if "ask" in directives:
                reply = f"you answered: {output}"
            else:
                name = directives.get("tool", "").partition(" ")[0]
                reply = f"tool {name} returned: {output}"
        elif "tool" in directives or "ask" in directives:
            if "ask" in directives:
                name, arguments = "ask_user", {"question": directives["ask"]}
            else:
                name, _, raw = directives["tool"].partition(" ")
                try:
                    arguments = json.loads(raw) if raw.strip() else {}
                except json.JSONDecodeError:
                    arguments = {"raw": raw}
                if not isinstance(arguments, dict):
                    arguments = {"value": arguments}
            turn = sum(1 for m in request.messages if m["role"] == "assistant")
            yield ToolUse(id=f"{self._prefix}_{turn + 1}", name=name, input=arguments)
            yield Usage(input_tokens=input_tokens, output_tokens=1, cache_read_tokens=cache_read)
            yield Stop("tool_use")
            return
        else:
            reply = f"echo: {text}"

        clock = asyncio.get_running_loop().time
        due = clock()
        for start in range(0, len(reply), CHUNK):
            if delay:
                due += delay
                now = clock()
                if now - due > CATCH_UP_DELTAS * delay:
                    due = now  # too far behind (a stalled loop): start the pace again
                await asyncio.sleep(max(0.0, due - now))
            yield TextDelta(reply[start : start + CHUNK])
        yield Usage(
            input_tokens=input_tokens,
            output_tokens=len(reply.split()),
            cache_read_tokens=cache_read,
        )
        yield Stop("end_turn")
