"""The SSE event stream of a run (docs/architecture.md, "HTTP"): a query over the log from a cursor,
then a live tail of the same log. It keeps no copy of history and no buffer per connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
from aiohttp import web

from eventstore import EventStore, RecordedEvent
from eventstore.live import Deliver
from eventstore.model import WireRow
from runs import metrics
from runs.events import TERMINAL_RUN_EVENTS, MessageDelta
from runs.schemas import SseFrame

__all__ = ["sse_frame", "sse_frames", "stream_events", "wire_data", "wire_frames"]

_frame = msgspec.json.Encoder()


class _DeltaText(msgspec.Struct):
    content: str


_delta_text = msgspec.json.Decoder(_DeltaText)
_DELTA = MessageDelta.TYPE
_TERMINAL_WIRE = frozenset(t.encode() for t in TERMINAL_RUN_EVENTS)


def wire_data(type_: str, data: str) -> bytes:
    """The ``data`` of a frame: the event's payload as logged, except that a ``message.delta``
    also carries its text as ``content_delta`` (the field Arkloop's clients read; ``content``
    is the documented one). Added here rather than logged, so the log holds the text once and
    runs recorded before the field existed stream it too."""
    raw = data.encode()
    if type_ != MessageDelta.TYPE or not raw.endswith(b"}"):
        return raw
    text = _frame.encode(_delta_text.decode(raw).content)
    return raw[:-1] + b',"content_delta":' + text + b"}"


def sse_frame(seq: int, type_: str, data: str, created_at: str) -> bytes:
    """``id: <seq>`` and one ``data:`` line of compact JSON (no ``event:`` field, so
    ``EventSource.onmessage`` sees every frame)."""
    body = _frame.encode(SseFrame(seq, type_, msgspec.Raw(wire_data(type_, data)), created_at))
    return b"id: %d\ndata: %s\n\n" % (seq, body)


#: What :func:`sse_frame` writes, as one format: ``SseFrame``'s keys in its order (the seq
#: goes in as its digits, as :meth:`read_stream_wire` gives it).
_FRAME = b'id: %b\ndata: {"seq":%b,"type":%b,"data":%b,"created_at":%b}\n\n'
_DELTA_WIRE = _DELTA.encode()
#: Printable ASCII but ``"`` and ``\``: a JSON string of these is the text in quotes.
_PLAIN_BYTES = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\')
_quoted_types: dict[bytes, bytes] = {}


def _plain(text: bytes) -> bool:
    """Whether ``text`` is spelt in JSON as itself in quotes (one pass in C: what is left
    after deleting every plain byte)."""
    return not text.translate(None, _PLAIN_BYTES)


def _quoted(text: bytes) -> bytes:
    """``text`` (UTF-8) as a JSON string, as msgspec spells it."""
    return b'"%b"' % text if _plain(text) else _frame.encode(text.decode())


class _DeltaLiteral(msgspec.Struct):
    content: msgspec.Raw


_delta_literal = msgspec.json.Decoder(_DeltaLiteral)
#: :data:`_FRAME` for a ``created_at`` that needs no escaping (the store writes
#: ``2026-01-02T03:04:05.678Z``): the quotes are in the format.
_FRAME_PLAIN_TIME = b'id: %b\ndata: {"seq":%b,"type":%b,"data":%b,"created_at":"%b"}\n\n'


#: How msgspec spells a delta's payload (``MessageDelta``: its text first), up to the text.
_DELTA_START = b'{"content":"'
_TEXT_AT = len(_DELTA_START)
_CLOSE = ord("}")
#: :data:`_FRAME_PLAIN_TIME` of a delta, in the pieces between its variable parts: the seq
#: (twice), the payload without its closing brace, its text's literal and the time.
_DELTA_PIECES = (
    b"id: ",
    b'\ndata: {"seq":',
    b',"type":"message.delta","data":',
    b',"content_delta":',
    b'},"created_at":"',
    b'"}\n\n',
)


def _escaped_delta_text(data: bytes) -> bytes:
    """A delta's text as a JSON string, decoded and encoded again (its payload has escapes)."""
    return _frame.encode(_delta_text.decode(data).content)


def _literal_delta_text(data: bytes) -> bytes:
    """A delta's text as it is spelt in its payload (no escapes: already msgspec's spelling)."""
    return _delta_literal.decode(data).content  # msgspec.Raw: the literal's bytes


def wire_frames(rows: Sequence[WireRow]) -> bytes:
    """The frames of ``rows`` (``store.read_stream_wire``), byte for byte what
    :func:`sse_frame` makes of each event, in one pass: catch-up writes hundreds at a time,
    and building the frames cost as much as reading the rows.

    Two checks are made once per batch instead of once per row: whether every time needs no
    escaping, and whether no payload holds a backslash. Without one, a delta's text is a JSON
    string with no escape in it, which is already spelt as msgspec would spell it again, so
    it is copied as it is instead of decoded and encoded."""
    plain_times = _plain(b"".join([row[3] for row in rows]))
    escaped = b"\\" in b"".join([row[2] for row in rows])
    if plain_times and not escaped:
        # The common case: a delta in msgspec's spelling (its text first) has its text's
        # literal found with one search (no backslash: the next quote closes it), and its
        # frame's pieces go into one list that is joined once for the batch (one format per
        # frame cost 10% to 20% more on a catch-up of 10,000 deltas).
        pieces: list[bytes] = []
        add, add_all = pieces.append, pieces.extend
        # Locals, not globals, in the loop: it runs once per event.
        id_, data, type_data, content_delta, time_, end_ = _DELTA_PIECES
        delta, start, at, close = _DELTA_WIRE, _DELTA_START, _TEXT_AT, _CLOSE
        quote_at = at - 1
        for seq, type_, stored, created_at in rows:
            if (
                type_ == delta
                and stored[:at] == start  # a slice: a third of startswith's cost
                and stored[-1] == close
                and (end := stored.find(b'"', at)) > 0
            ):
                add_all(
                    (
                        id_,
                        seq,
                        data,
                        seq,
                        type_data,
                        stored[:-1],
                        content_delta,
                        stored[quote_at : end + 1],
                        time_,
                        created_at,
                        end_,
                    )
                )
            else:
                add(_frame_of(seq, type_, stored, created_at, _literal_delta_text, True))
        return b"".join(pieces)
    delta_text = _escaped_delta_text if escaped else _literal_delta_text
    return b"".join(
        [
            _frame_of(seq, type_, stored, created_at, delta_text, plain_times)
            for seq, type_, stored, created_at in rows
        ]
    )


def _frame_of(
    seq: bytes,
    type_: bytes,
    stored: bytes,
    created_at: bytes,
    delta_text: Callable[[bytes], bytes],
    plain_time: bool,
) -> bytes:
    """One row's frame (:func:`wire_frames`)."""
    types = _quoted_types
    quoted_type = types.get(type_)
    if quoted_type is None:
        quoted_type = _quoted(type_)
        if len(types) < 256:  # the log's event types: a handful
            types[type_] = quoted_type
    data = stored
    if type_ == _DELTA_WIRE and stored.endswith(b"}"):
        data = b'%b,"content_delta":%b}' % (stored[:-1], delta_text(stored))
    if plain_time:
        return _FRAME_PLAIN_TIME % (seq, seq, quoted_type, data, created_at)
    return _FRAME % (seq, seq, quoted_type, data, _quoted(created_at))


def sse_frames(events: Iterable[RecordedEvent]) -> bytes:
    """The frames of ``events`` (live events, from memory): :func:`wire_frames`."""
    return wire_frames(
        [(b"%d" % e.seq, e.type.encode(), e.data.encode(), e.created_at.encode()) for e in events]
    )


#: Recent live frames by (store, stream, first seq, last seq), with the same as one chunk of
#: HTTP/1.1's chunked encoding. Every follower of a run at the same cursor is handed the same
#: events, and would otherwise encode them again; events never change, so the frames of a
#: range are the same for all of them.
_recent_frames: dict[tuple[int, str, int, int], tuple[bytes, bytes]] = {}
_RECENT_FRAMES = 2048
#: Bytes waiting in a connection's socket buffer beyond which live frames are no longer written
#: straight from the commit: its task takes over and waits for the client to drain them.
_DIRECT_BUFFER_LIMIT = 1 << 16


def _live(store: EventStore, stream: str, events: list[RecordedEvent]) -> tuple[bytes, bytes]:
    key = (id(store), stream, events[0].seq, events[-1].seq)
    cached = _recent_frames.get(key)
    if cached is None:
        frames = sse_frames(events)
        cached = (frames, b"%x\r\n%b\r\n" % (len(frames), frames))
        if len(_recent_frames) >= _RECENT_FRAMES:
            del _recent_frames[next(iter(_recent_frames))]  # the oldest
        _recent_frames[key] = cached
    return cached


def _live_frames(store: EventStore, stream: str, events: list[RecordedEvent]) -> bytes:
    return _live(store, stream, events)[0] if events else b""


class _Follower:
    """What one live SSE connection has sent: its cursor and when it last wrote."""

    __slots__ = ("cursor", "last")

    def __init__(self, cursor: int, last: float) -> None:
        self.cursor = cursor
        self.last = last


class _Handed:
    """The batch last handed to sinks, with its frames. The tail hands every follower of a
    stream the same list, so this is worked out once per commit, not once per connection."""

    __slots__ = ("chunk", "ends", "events", "frames")

    def __init__(self) -> None:
        self.events: list[RecordedEvent] | None = None
        self.ends = False
        self.frames = self.chunk = b""

    def of(self, store: EventStore, stream: str, events: list[RecordedEvent]) -> _Handed:
        if events is not self.events:
            self.events = events
            self.ends = any(e.type in TERMINAL_RUN_EVENTS for e in events)
            self.frames, self.chunk = (b"", b"") if self.ends else _live(store, stream, events)
        return self


class _FrameCount:
    """``SSE_FRAMES`` for frames written by sinks: counted here, and added to the metric once
    per turn of the event loop rather than once per connection. The flush is due on the loop
    it was asked of: one that closed before running it (a test's) does not stop the next."""

    __slots__ = ("count", "due_on")

    def __init__(self) -> None:
        self.count = 0
        self.due_on: asyncio.AbstractEventLoop | None = None

    def add(self, frames: int) -> None:
        self.count += frames
        loop = asyncio.get_running_loop()
        if self.due_on is not loop:
            self.due_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        count, self.count, self.due_on = self.count, 0, None
        if count:
            metrics.SSE_FRAMES.inc(count)


_handed = _Handed()
_frame_count = _FrameCount()


def _direct(
    store: EventStore,
    stream: str,
    response: web.StreamResponse,
    transport: asyncio.Transport | None,
    follower: _Follower,
) -> Deliver | None:
    """A sink that writes a caught-up connection's live frames straight to its socket as they
    are published (eventstore/live.py), or None where the response's own writer is needed:
    a compressed body, or no transport. The frames are the same bytes ``response.write``
    would send, framed as a chunk when the response is chunked (HTTP/1.1). It declines, and
    the connection's task takes over, for a batch with the run's terminal event (the task
    ends the stream) and while the client is slow to read."""
    if transport is None or response.compression:
        return None
    chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
    time = asyncio.get_running_loop().time

    def deliver(events: list[RecordedEvent]) -> bool:
        if transport.is_closing() or transport.get_write_buffer_size() > _DIRECT_BUFFER_LIMIT:
            return False
        handed = _handed.of(store, stream, events)
        if handed.ends:
            return False
        if events[0].seq > follower.cursor:
            frames, chunk = handed.frames, handed.chunk
        else:  # the cursor is past the sink's (a client's cursor beyond the end)
            events = [e for e in events if e.seq > follower.cursor]
            if not events:
                return True
            frames, chunk = _live(store, stream, events)
        transport.write(chunk if chunked else frames)
        _frame_count.add(len(events))
        follower.cursor = events[-1].seq
        follower.last = time()
        return True

    return deliver


async def stream_events(
    store: EventStore,
    response: web.StreamResponse,
    stream: str,
    *,
    after_seq: int,
    follow: bool,
    ended: bool,
    batch_limit: int,
    heartbeat_s: float,
    transport: asyncio.Transport | None = None,
    opening: bytes = b"",
) -> bytes:
    """Write ``opening`` and then the stream's events after ``after_seq`` as SSE frames:
    history in batches, then (with ``follow``, unless the run had ``ended``) live until its
    terminal event. ``opening`` (the stream's first comment) goes out with the first batch
    of history, in one send; without history, with the end of the stream or alone before
    the stream waits for live events.

    The frames that end the stream (the batch with the terminal event) are returned, not
    written, for the caller to send with the end of the response (``write_eof``): one send,
    so a client that stops reading at the terminal event finds the response complete and
    can keep its connection.

    With the connection's ``transport`` (its headers already sent), a follower that has
    caught up has its live frames written straight from each commit (:func:`_direct`)."""
    # History: batches of at most ``batch_limit`` rows, one write per batch (a write per frame
    # costs a send per frame and capped catch-up at a tenth of the log's read speed).
    cursor = after_seq
    read_any = False
    while True:
        batch = await store.read_stream_wire(stream, cursor, batch_limit)
        if batch:
            read_any = True
            frames = opening + wire_frames(batch)  # b"" + x is x itself: no copy
            opening = b""
            metrics.SSE_FRAMES.inc(len(batch))
            cursor = int(batch[-1][0])
            if batch[-1][1] in _TERMINAL_WIRE:
                return frames
            await response.write(frames)
        if len(batch) < batch_limit:
            break
    if not follow or ended:
        return opening
    if opening:
        await response.write(opening)
    # Live: follow from no later than the log's last event, so a cursor past the end still
    # sees the terminal event (not sent, but it ends the stream) — also when the run ended
    # after its status was read (then the last event *is* the terminal one). When the history
    # above read events, the cursor is one in the log and no terminal event came up to it:
    # following from it sees the terminal event whenever it comes, without reading the end.
    start = cursor if read_any else min(cursor, max(0, await store.last_seq(stream) - 1))
    follower = _Follower(cursor, asyncio.get_running_loop().time())
    deliver = _direct(store, stream, response, transport, follower)
    batches = store.subscribe_batches(stream, start, batch_limit, deliver)
    owner = asyncio.current_task()
    assert owner is not None
    loop = asyncio.get_running_loop()
    beat: asyncio.Task[None] | None = None

    def start_heartbeat() -> None:
        nonlocal beat
        beat = loop.create_task(
            _heartbeat(response, follower, heartbeat_s, owner), name="sse-heartbeat"
        )

    # Most streams end within their first interval (a run takes seconds): the heartbeat's task
    # is made only for one that does not, when its first ping could be due.
    first_beat = loop.call_later(heartbeat_s, start_heartbeat)
    try:
        # No task, future or timer per event: the handler waits inside the subscription (on
        # the stream's shared notification) and the connection's heartbeat fills silences.
        # What arrived together (a commit's events) is sent in one write.
        async for events in batches:
            # Up to and with the terminal event (0: none in this batch).
            end = next((i + 1 for i, e in enumerate(events) if e.type in TERMINAL_RUN_EVENTS), 0)
            fresh = [e for e in (events[:end] if end else events) if e.seq > follower.cursor]
            frames = _live_frames(store, stream, fresh)
            metrics.SSE_FRAMES.inc(len(fresh))
            if end:
                return frames
            if fresh:
                await response.write(frames)
                follower.cursor = fresh[-1].seq
                follower.last = asyncio.get_running_loop().time()
        return b""
    finally:
        first_beat.cancel()
        if beat is not None:
            beat.cancel()
        await batches.aclose()
        if beat is not None:
            with contextlib.suppress(BaseException):
                await beat


async def _heartbeat(
    response: web.StreamResponse, pulse: _Follower, interval: float, owner: asyncio.Task[Any]
) -> None:
    """``: ping`` whenever nothing was sent for ``interval`` seconds (one timer per interval,
    not per event). A failed write means the client left: end its stream at once."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            idle = loop.time() - pulse.last
            if idle < interval:
                await asyncio.sleep(interval - idle)
                continue
            pulse.last = loop.time()
            await response.write(b": ping\n\n")
    except ConnectionResetError:
        owner.cancel()
