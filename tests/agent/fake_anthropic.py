"""A fake Anthropic Messages API on 127.0.0.1, speaking the real streaming wire format.

The real ``anthropic`` SDK is pointed at it through a route's ``base_url``. Each test scripts a
queue of responses; every request body (and its headers) is recorded, and so is a request that
the client aborted. Event and field names follow the SDK's own types
(``anthropic/types/raw_message_stream_event.py``, ``message_delta_usage.py``, ``usage.py``) and
its SSE loop (``anthropic/_streaming.py``: ``ping`` skipped, ``error`` raised as a status error).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = [
    "FakeAnthropic",
    "HttpError",
    "Sse",
    "error_event",
    "message_start",
    "text_events",
    "tool_events",
]

SseEvent = tuple[str, dict[str, Any]]


@dataclass
class Sse:
    """One streamed response: ``events`` in order, ``delay_s`` apart.

    ``cut_after``: drop the TCP connection after that many events (no terminating chunk).
    ``hold``: after the events, keep the response open (a ``ping`` every ``delay_s`` or 20 ms)
    until the client goes away.
    """

    events: list[SseEvent]
    delay_s: float = 0.0
    cut_after: int | None = None
    hold: bool = False


@dataclass
class HttpError:
    """A plain HTTP error response with the API's error JSON shape."""

    status: int
    error_type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


Scripted = Sse | HttpError


def message_start(
    *,
    input_tokens: int = 10,
    cache_read: int = 0,
    cache_write: int = 0,
    output_tokens: int = 1,
    model: str = "claude-test",
    message_id: str = "msg_fake_01",
) -> SseEvent:
    return (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": input_tokens,
                    "cache_creation_input_tokens": cache_write,
                    "cache_read_input_tokens": cache_read,
                    "output_tokens": output_tokens,
                },
            },
        },
    )


def _text_block(index: int, chunks: list[str]) -> list[SseEvent]:
    events: list[SseEvent] = [
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            },
        )
    ]
    events += [
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "text_delta", "text": chunk},
            },
        )
        for chunk in chunks
    ]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


def _message_end(stop_reason: str, output_tokens: int) -> list[SseEvent]:
    return [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def text_events(
    chunks: list[str],
    *,
    input_tokens: int = 10,
    output_tokens: int = 5,
    cache_read: int = 0,
    cache_write: int = 0,
    stop_reason: str = "end_turn",
) -> list[SseEvent]:
    """A complete text answer: message_start, a ping, one text block, message_delta, stop."""
    return [
        message_start(input_tokens=input_tokens, cache_read=cache_read, cache_write=cache_write),
        ("ping", {"type": "ping"}),
        *_text_block(0, chunks),
        *_message_end(stop_reason, output_tokens),
    ]


def tool_events(
    tool_id: str,
    name: str,
    json_parts: list[str],
    *,
    text: str = "",
    input_tokens: int = 10,
    output_tokens: int = 7,
) -> list[SseEvent]:
    """A tool call (optionally after some text), its input split over ``input_json_delta``s."""
    events: list[SseEvent] = [message_start(input_tokens=input_tokens)]
    index = 0
    if text:
        events += _text_block(0, [text])
        index = 1
    events.append(
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}},
            },
        )
    )
    events.append(("ping", {"type": "ping"}))
    events += [
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": part},
            },
        )
        for part in json_parts
    ]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events += _message_end("tool_use", output_tokens)
    return events


def error_event(error_type: str, message: str) -> SseEvent:
    return ("error", {"type": "error", "error": {"type": error_type, "message": message}})


def _frame(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


class FakeAnthropic:
    """``POST /v1/messages`` answering from a queue of scripted responses."""

    def __init__(self) -> None:
        self.script: collections.deque[Scripted] = collections.deque()
        self.requests: list[dict[str, Any]] = []  # JSON bodies, in arrival order
        self.headers: list[dict[str, str]] = []
        self.aborted: list[int] = []  # indexes of requests the client abandoned mid-response
        self.completed: list[int] = []  # indexes of responses sent in full
        self.streaming = asyncio.Event()  # set once a response's first event is on the wire
        self.abort_seen = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def add(self, *responses: Scripted) -> None:
        self.script.extend(responses)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        index = len(self.requests)
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        if not self.script:
            return web.json_response(
                {"type": "error", "error": {"type": "api_error", "message": "fake: no script"}},
                status=500,
            )
        item = self.script.popleft()
        if isinstance(item, HttpError):
            return web.json_response(
                {"type": "error", "error": {"type": item.error_type, "message": item.message}},
                status=item.status,
                headers={"request-id": f"req_fake_{index}", **item.headers},
            )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": f"req_fake_{index}",
            }
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for number, (name, data) in enumerate(item.events):
                if item.cut_after is not None and number == item.cut_after:
                    # Drop the connection mid-body: the client sees an incomplete chunked read.
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                await response.write(_frame(name, data))
                self.streaming.set()
                if item.delay_s:
                    await asyncio.sleep(item.delay_s)
            while item.hold:
                await asyncio.sleep(item.delay_s or 0.02)
                await response.write(_frame("ping", {"type": "ping"}))
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.aborted.append(index)
            self.abort_seen.set()
            with contextlib.suppress(Exception):
                if request.transport is not None:
                    request.transport.abort()
            return response
        self.completed.append(index)
        return response
