"""``runlog tail``: follow a run live over SSE and print it for a person to read."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, TextIO

import aiohttp

from runs.events import TERMINAL_RUN_EVENTS

__all__ = ["render", "tail"]


def render(event: dict[str, Any], out: TextIO) -> None:
    """One event, readably: assistant text as it streams, tools, waits, the end."""
    kind, data = event["type"], event.get("data") or {}
    if kind == "message.delta":
        out.write(data.get("content", ""))
    elif kind == "run.started":
        out.write(
            f"[run {data.get('run_id')} · {data.get('route_id')}/{data.get('model')}"
            f" · persona {data.get('persona_id')}]\n"
        )
    elif kind == "tool.call":
        out.write(f"\n→ {data.get('name')}({json.dumps(data.get('arguments', {}))})\n")
    elif kind == "tool.result":
        marker = "✗" if data.get("is_error") else "←"
        out.write(f"{marker} {data.get('output')}\n")
    elif kind == "run.waiting_for_input":
        out.write(f"\n? {data.get('prompt')}  (answer with POST /v1/runs/<id>/input)\n")
    elif kind == "run.input_provided":
        out.write(f"> {data.get('content')}\n")
    elif kind == "run.retried":
        out.write(f"\n[retry {data.get('attempt')}: {data.get('reason')}; output replaced]\n")
    elif kind == "run.resumed":
        out.write(f"\n[resumed after a restart from seq {data.get('from_seq')}]\n")
    elif kind == "run.usage":
        out.write(
            f"\n[usage: {data.get('input_tokens')} in / {data.get('output_tokens')} out,"
            f" ${data.get('cost_usd', 0):.6f}]\n"
        )
    elif kind == "run.failed":
        out.write(f"\n[failed: {data.get('error_class')}: {data.get('message')}]\n")
    elif kind in TERMINAL_RUN_EVENTS:
        out.write(f"\n[{kind.removeprefix('run.')}]\n")
    out.flush()


async def tail(url: str, token: str, run_id: str, out: TextIO | None = None) -> int:
    """Print the run until its terminal event; reconnects with ``Last-Event-ID`` when cut."""
    out = out or sys.stdout
    last_seq = 0
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt in range(20):
            try:
                async with session.get(
                    f"{url.rstrip('/')}/v1/runs/{run_id}/events",
                    headers={**headers, "Last-Event-ID": str(last_seq)},
                ) as response:
                    if response.status != 200:
                        body = await response.text()
                        print(f"error: HTTP {response.status}: {body}", file=sys.stderr)
                        return 1
                    async for raw in response.content:
                        line = raw.decode("utf-8").rstrip("\r\n")
                        if not line.startswith("data:"):
                            continue
                        event = json.loads(line[5:].strip())
                        last_seq = event["seq"]
                        render(event, out)
                        if event["type"] in TERMINAL_RUN_EVENTS:
                            return 0 if event["type"] == "run.completed" else 1
            except aiohttp.ClientError as exc:
                print(f"\n[connection lost: {exc}; reconnecting]", file=sys.stderr)
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
    return 1
