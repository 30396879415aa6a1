"""``GET /v1/runs/{run_id}/events``: the run's log read from a cursor, then followed live.

The Runs API's "SSE Event Stream". Everything goes through the real app on a real
SQLite file (WAL) over real TCP (``aiohttp_client`` listens on 127.0.0.1). Frames are parsed
strictly here (the exact bytes on the wire), and one test reads the stream with ``httpx-sse``,
an SSE client this project does not implement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
from aiohttp import ClientResponse, web
from httpx_sse import aconnect_sse

from runs.auth import key_sha256
from runs.events import TERMINAL_RUN_EVENTS, run_stream
from runs.providers.base import ModelRequest, ProviderEvent, Stop, TextDelta, Usage
from tests.conftest import ADMIN_KEY, Api, app_factory

PING = b": ping"
KEYS = ["seq", "type", "data", "created_at"]
#: 138 characters of reply (``echo: `` + text): 35 deltas of 4 characters with coalescing off.
TEXT = "the quick brown fox jumps over the lazy dog " * 3
TIMEOUT = 10.0

AppFactory = Callable[..., web.Application]


# -- reading the wire ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    seq: int
    type: str
    data: dict[str, Any]
    created_at: str


def parse_block(block: bytes) -> Frame | None:
    """One SSE block (blank line removed): ``None`` for the ``: ping`` comment, else the frame.

    Asserts the exact shape: ``id: <seq>`` then one ``data:`` line of compact JSON with exactly
    the four keys, and nothing else (no ``event:`` field, no ``retry:``).
    """
    if block == PING:
        return None
    lines = block.split(b"\n")
    assert len(lines) == 2, block
    id_line, data_line = lines
    assert id_line.startswith(b"id: "), block
    assert data_line.startswith(b"data: "), block
    payload = data_line[len(b"data: ") :]
    body = json.loads(payload)
    assert list(body) == KEYS, body
    # Compact: re-encoding the decoded value without spaces gives the same bytes back.
    assert msgspec.json.encode(body) == payload, payload
    assert id_line == b"id: %d" % body["seq"], block
    assert isinstance(body["data"], dict)
    return Frame(body["seq"], body["type"], body["data"], body["created_at"])


class EventStream:
    """One SSE connection, read block by block (``None`` items are ``: ping`` comments)."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response
        self.items: list[Frame | None] = []
        self.ended = False

    @property
    def frames(self) -> list[Frame]:
        return [item for item in self.items if item is not None]

    @property
    def seqs(self) -> list[int]:
        return [frame.seq for frame in self.frames]

    async def next_item(self) -> Frame | None:
        """The next block; raises ``EOFError`` when the server closed the stream."""
        chunk = await self.response.content.readuntil(b"\n\n")
        if not chunk:
            self.ended = True
            raise EOFError
        assert chunk.endswith(b"\n\n"), f"partial frame at the end of the stream: {chunk!r}"
        item = parse_block(chunk[:-2])
        self.items.append(item)
        return item

    async def next_frame(self) -> Frame | None:
        """The next frame (pings skipped); ``None`` at the end of the stream."""
        while True:
            try:
                item = await self.next_item()
            except EOFError:
                return None
            if item is not None:
                return item

    async def read_to_end(self, timeout: float = TIMEOUT) -> list[Frame]:
        async with asyncio.timeout(timeout):
            while await self.next_frame() is not None:
                pass
        return self.frames


@contextlib.asynccontextmanager
async def connect(
    api: Api,
    run_id: str,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    key: str | None = None,
) -> AsyncIterator[EventStream]:
    """Open the stream, check the response head and the opening ``: ping``."""
    async with api.client.get(
        f"/v1/runs/{run_id}/events",
        params=params or {},
        headers={**api.headers(key), **(headers or {})},
    ) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert response.headers["X-Trace-Id"]
        stream = EventStream(response)
        async with asyncio.timeout(TIMEOUT):
            assert await stream.next_item() is None  # the stream opens with a comment
        yield stream


async def read_events(api: Api, run_id: str, **params: str) -> EventStream:
    async with connect(api, run_id, params=params) as stream:
        await stream.read_to_end()
    return stream


# -- the log, the run ---------------------------------------------------------------------------


def on_the_wire(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event's data as SSE sends it: as logged, and a ``message.delta`` also carries its
    text as ``content_delta`` (what Arkloop's clients read), after the logged keys."""
    if type_ == "message.delta":
        return {**data, "content_delta": data["content"]}
    return data


async def log_frames(api: Api, run_id: str) -> list[Frame]:
    """The frames SSE must send for the run: its log, event by event."""
    events = await api.runtime.store.read_stream(run_stream(run_id), 0, 100_000)
    return [
        Frame(e.seq, e.type, on_the_wire(e.type, json.loads(e.data)), e.created_at) for e in events
    ]


async def wait_for_seq(api: Api, run_id: str, seq: int) -> None:
    """Await the run's log reaching ``seq`` (the store's own live notification, no sleep)."""
    events = api.runtime.store.subscribe(run_stream(run_id), seq - 1)
    try:
        async with asyncio.timeout(TIMEOUT):
            await anext(events)
    finally:
        await events.aclose()


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Await ``condition()`` with a bounded poll of the event loop (for clean-up checks)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def assistant_reply(api: Api, thread_id: str) -> str:
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert messages[-1]["role"] == "assistant"
    return str(messages[-1]["content"])


def deltas(frames: list[Frame]) -> str:
    return "".join(f.data["content"] for f in frames if f.type == "message.delta")


async def cancel(api: Api, run_id: str) -> None:
    await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)
    await api.wait_for(run_id)


@pytest.fixture
async def make_api(aiohttp_client: Any, make_app: AppFactory) -> Callable[..., Any]:
    async def make(**config: Any) -> Api:
        return Api(await aiohttp_client(make_app(**config)), ADMIN_KEY)

    return make


@pytest.fixture
async def make_api_on_both(aiohttp_client: Any, db_location: str) -> Callable[..., Any]:
    """``make_api`` once per backend."""

    async def make(**config: Any) -> Api:
        return Api(await aiohttp_client(app_factory(db_location)(**config)), ADMIN_KEY)

    return make


# -- format ---------------------------------------------------------------------------------------


async def test_frames_are_id_and_compact_data_with_the_four_keys(api: Api) -> None:
    # Quotes, a backslash and non-ASCII text: the JSON must still be one compact line.
    thread_id, run_id = await api.start_run('héllo "wörld" \\ naïve ✓ 日本語')
    await api.wait_for(run_id)
    async with api.client.get(
        f"/v1/runs/{run_id}/events",
        params={"follow": "0"},
        headers=api.headers(**{"X-Trace-Id": "sse-trace-0001"}),
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert response.headers["X-Trace-Id"] == "sse-trace-0001"
        body = await response.read()
    assert body.startswith(b": ping\n\n")
    assert body.endswith(b"\n\n")
    assert b"event:" not in body
    blocks = body[: -len(b"\n\n")].split(b"\n\n")
    assert blocks[0] == PING
    frames = [parse_block(block) for block in blocks[1:]]
    assert None not in frames
    assert frames == await log_frames(api, run_id)
    assert [f.seq for f in frames if f] == list(range(1, len(frames) + 1))
    assert frames[0] is not None
    assert frames[0].type == "run.started"
    assert frames[-1] is not None
    assert frames[-1].type == "run.completed"
    assert deltas([f for f in frames if f]) == await assistant_reply(api, thread_id)


# -- replay -----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_limit", [3, 500])
async def test_replay_from_every_cursor_is_exactly_the_rest_of_the_log(
    make_api_on_both: Callable[..., Any], batch_limit: int
) -> None:
    api = await make_api_on_both(sse_batch_limit=batch_limit)
    _, run_id = await api.start_run("replay " + TEXT[:40])
    await api.wait_for(run_id)
    log = await log_frames(api, run_id)
    last = log[-1].seq
    assert last > 3 * 3  # several batches of 3
    assert log[-1].type == "run.completed"
    for after in range(last + 1):
        for follow in ("0", "1"):
            stream = await read_events(api, run_id, after_seq=str(after), follow=follow)
            assert stream.ended
            assert stream.frames == log[after:], (after, follow)
    # The same through the header a browser's EventSource sends when it reconnects.
    for after in (0, 1, last // 2, last - 1):
        async with connect(api, run_id, headers={"Last-Event-ID": str(after)}) as stream:
            assert await stream.read_to_end() == log[after:]


async def test_a_cursor_past_the_end_of_a_finished_run_closes_at_once(api: Api) -> None:
    _, run_id = await api.start_run("short")
    await api.wait_for(run_id)
    last = (await log_frames(api, run_id))[-1].seq
    for after in (last, last + 1, 10**15 - 1):
        for follow in ("0", "1"):
            stream = await read_events(api, run_id, after_seq=str(after), follow=follow)
            assert stream.items == [None], (after, follow)  # only the opening ping


@pytest.mark.parametrize("live", [True, False], ids=["live", "history"])
async def test_the_terminal_frame_comes_with_the_end_of_the_response(api: Api, live: bool) -> None:
    """A client that stops reading at the terminal event finds the response complete, so
    its connection can carry the next request."""
    _, run_id = await api.start_run("short")
    if not live:
        await api.wait_for(run_id)
    url = f"/v1/runs/{run_id}/events?after_seq=0"
    async with api.client.get(url, headers=api.headers()) as r:
        assert r.status == 200
        seen = b""
        async for chunk in r.content.iter_any():
            seen += chunk
            if b'"type":"run.completed"' in seen:
                break
        assert b'"type":"run.completed"' in seen
        assert r.content.at_eof(), "the end of the response came apart from the last frame"


# -- live ---------------------------------------------------------------------------------------


async def test_a_subscriber_attached_mid_run_gets_every_later_event_once(api_on_both: Api) -> None:
    api = api_on_both
    thread_id, run_id = await api.start_run("/slow 30\n" + TEXT)
    await wait_for_seq(api, run_id, 4)
    async with (
        connect(api, run_id) as from_start,
        connect(api, run_id, params={"after_seq": "3"}) as mid_run,
    ):
        attached_at = await api.runtime.store.last_seq(run_stream(run_id))
        whole = await from_start.read_to_end()
        tail = await mid_run.read_to_end()
    log = await log_frames(api, run_id)
    # The run was still producing when both attached: most of it arrived live.
    assert log[-1].seq > attached_at + 10
    assert log[-1].type == "run.completed"
    assert whole == log
    assert tail == log[3:]
    # The stream ended right after the terminal event: nothing follows it.
    assert from_start.ended
    assert from_start.items[-1] == log[-1]
    assert mid_run.items[-1] == log[-1]
    assert deltas(whole) == await assistant_reply(api, thread_id) == "echo: " + TEXT.strip()


async def test_follow_zero_on_a_live_run_returns_what_the_log_holds_and_closes(api: Api) -> None:
    _, run_id = await api.start_run("/slow 50\n" + TEXT)
    await wait_for_seq(api, run_id, 4)
    stream = await read_events(api, run_id, follow="0")
    _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
    assert run["status"] == "running"  # closed while the run was still going
    assert len(stream.frames) >= 4
    assert stream.seqs == list(range(1, len(stream.frames) + 1))
    assert not {f.type for f in stream.frames} & TERMINAL_RUN_EVENTS
    assert stream.frames == (await log_frames(api, run_id))[: len(stream.frames)]
    await cancel(api, run_id)


async def test_a_cursor_past_the_end_of_a_live_run_tails_and_ends_with_the_run(api: Api) -> None:
    _, run_id = await api.start_run("/slow 20\n" + TEXT[:60])
    await wait_for_seq(api, run_id, 2)
    ahead = await api.runtime.store.last_seq(run_stream(run_id)) + 5
    async with (
        connect(api, run_id, params={"after_seq": str(ahead)}) as near,
        connect(api, run_id, params={"after_seq": str(10**15 - 1)}) as far,
    ):
        near_frames = await near.read_to_end()
        far_frames = await far.read_to_end()
    log = await log_frames(api, run_id)
    assert log[-1].type == "run.completed"
    assert near_frames == log[ahead:]
    assert near_frames
    assert far_frames == []
    assert far.ended


async def test_a_past_the_end_cursor_ends_even_if_the_run_finishes_while_connecting(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run is live when the handler looks it up and over before it starts to follow: the
    stream must still see the terminal event (not send it) and close, not wait forever."""
    _, run_id = await api.start_run("/slow 100\nbye")
    store = api.runtime.store
    last_seq = store.last_seq

    async def last_seq_after_the_run_ended(stream: str) -> int:
        if stream == run_stream(run_id):
            events = store.subscribe(stream, 0)
            try:
                async for event in events:
                    if event.type in TERMINAL_RUN_EVENTS:
                        break
            finally:
                await events.aclose()
        return await last_seq(stream)

    monkeypatch.setattr(store, "last_seq", last_seq_after_the_run_ended)
    async with connect(api, run_id, params={"after_seq": "1000"}) as stream:
        assert await stream.read_to_end(timeout=5) == []
    assert stream.ended


async def test_heartbeat_comments_fill_the_silences_between_frames(
    make_api: Callable[..., Any],
) -> None:
    api = await make_api(sse_heartbeat_seconds=0.1)
    _, run_id = await api.start_run("/slow 300\nhi")
    async with connect(api, run_id) as stream:
        frames = await stream.read_to_end()
    assert frames == await log_frames(api, run_id)
    items = stream.items
    first = items.index(frames[0])
    last = items.index(frames[-1])
    pings_between = [i for i in range(first, last) if items[i] is None]
    # 2 deltas 300 ms apart with a 100 ms heartbeat: pings between the frames.
    assert len(pings_between) >= 3, items
    assert items[-1] == frames[-1]  # closed right after the terminal event


# -- reconnect ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["last_event_id", "after_seq"])
async def test_reconnecting_mid_run_loses_nothing_and_repeats_nothing(
    api_on_both: Api, how: str
) -> None:
    api = api_on_both
    thread_id, run_id = await api.start_run("/slow 30\n" + TEXT)
    async with connect(api, run_id) as first:
        while len(first.frames) < 6:
            assert await first.next_frame() is not None
    # The connection is cut mid-run (the context closed the response and its connection).
    assert first.frames[-1].type == "message.delta"
    last_id = str(first.frames[-1].seq)
    cursor = (
        {"headers": {"Last-Event-ID": last_id}}
        if how == "last_event_id"
        else {"params": {"after_seq": last_id}}
    )
    async with connect(api, run_id, **cursor) as second:  # type: ignore[arg-type]
        await second.read_to_end()
    union = first.seqs + second.seqs
    log = await log_frames(api, run_id)
    assert union == [f.seq for f in log]  # no gap, no duplicate, in order
    assert first.frames + second.frames == log
    assert log[-1].type == "run.completed"
    assert deltas(first.frames + second.frames) == await assistant_reply(api, thread_id)


async def test_after_seq_wins_over_last_event_id(api: Api) -> None:
    _, run_id = await api.start_run("cursor precedence")
    await api.wait_for(run_id)
    log = await log_frames(api, run_id)
    for header in ("1", "5", "not-a-number"):
        async with connect(
            api, run_id, params={"after_seq": "3"}, headers={"Last-Event-ID": header}
        ) as stream:
            assert await stream.read_to_end() == log[3:]


# -- an SSE client this project does not implement --------------------------------------------


async def test_httpx_sse_reads_the_stream_and_resumes_like_an_event_source(api: Api) -> None:
    thread_id, run_id = await api.start_run("/slow 30\n" + TEXT)
    url = str(api.client.make_url(f"/v1/runs/{run_id}/events"))
    assert url.startswith("http://127.0.0.1:")
    received: list[tuple[str, str, dict[str, Any]]] = []

    async def read(headers: dict[str, str], stop_after: int | None) -> None:
        async with aconnect_sse(http, "GET", url, headers=headers) as source:
            assert source.response.status_code == 200
            async for sse in source.aiter_sse():
                received.append((sse.event, sse.id, json.loads(sse.data)))
                if stop_after is not None and len(received) == stop_after:
                    return

    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        await read(api.headers(), stop_after=5)
        # Reconnect the way EventSource does: the last id seen, in Last-Event-ID.
        await read(api.headers(**{"Last-Event-ID": received[-1][1]}), stop_after=None)
    log = await log_frames(api, run_id)
    assert [event for event, _, _ in received] == ["message"] * len(log)  # no event: field
    assert [sse_id for _, sse_id, _ in received] == [str(f.seq) for f in log]
    assert [Frame(**body) for _, _, body in received] == log
    assert log[-1].type == "run.completed"
    assert deltas(log) == await assistant_reply(api, thread_id)


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "headers", "code"),
    [
        ({"after_seq": "-1"}, {}, "validation.after_seq"),
        ({"after_seq": "abc"}, {}, "validation.after_seq"),
        ({"after_seq": "1.5"}, {}, "validation.after_seq"),
        ({"after_seq": ""}, {}, "validation.after_seq"),
        ({"after_seq": str(10**20)}, {}, "validation.after_seq"),
        ({}, {"Last-Event-ID": "-3"}, "validation.after_seq"),
        ({}, {"Last-Event-ID": "seven"}, "validation.after_seq"),
        ({}, {"Last-Event-ID": str(10**20)}, "validation.after_seq"),
        ({"follow": "2"}, {}, "validation.follow"),
        ({"follow": "yes"}, {}, "validation.follow"),
    ],
)
async def test_bad_cursor_or_follow_is_a_400_before_any_stream_byte(
    api: Api, params: dict[str, str], headers: dict[str, str], code: str
) -> None:
    _, run_id = await api.start_run("x")
    await api.wait_for(run_id)
    async with api.client.get(
        f"/v1/runs/{run_id}/events", params=params, headers={**api.headers(), **headers}
    ) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["code"] == code
    assert body["trace_id"] == response.headers["X-Trace-Id"]
    assert set(body) == {"code", "message", "details", "trace_id"}


async def test_another_orgs_run_is_404_and_no_key_is_401(api: Api) -> None:
    _, run_id = await api.start_run("mine")
    other = await api.new_org_key()
    for params in ({}, {"follow": "0"}, {"after_seq": "1"}):
        async with api.client.get(
            f"/v1/runs/{run_id}/events", params=params, headers=api.headers(other)
        ) as response:
            assert response.status == 404
            assert response.content_type == "application/json"
            body = await response.json()
        assert body["code"] == "not_found"
        assert body["trace_id"] == response.headers["X-Trace-Id"]
    for headers in ({}, {"Authorization": "Bearer rl_nope"}, {"Authorization": "Basic eDp5"}):
        async with api.client.get(f"/v1/runs/{run_id}/events", headers=headers) as response:
            assert response.status == 401
            assert response.content_type == "application/json"
            body = await response.json()
        assert body["code"].startswith("auth.")
    await api.wait_for(run_id)


async def test_an_access_token_from_login_opens_the_stream(api: Api) -> None:
    key = await api.runtime.queries.api_key_by_hash(key_sha256(ADMIN_KEY))
    assert key is not None
    await api.runtime.accounts.create_user(key["org_id"], "dora", "dora@example.com", "pw-dora")
    async with api.client.post(
        "/v1/auth/login", json={"login": "dora", "password": "pw-dora"}
    ) as response:
        assert response.status == 200
        token = (await response.json())["access_token"]
    _, run_id = await api.start_run("token")
    await api.wait_for(run_id)
    async with connect(api, run_id, key=token) as stream:
        assert await stream.read_to_end() == await log_frames(api, run_id)


# -- resources --------------------------------------------------------------------------------


def sse_tasks() -> set[asyncio.Task[Any]]:
    """Tasks of the SSE handler or of a subscription's pending read."""
    names = ("run_events", "_stream_events", "_heartbeat", "subscribe", "async_generator_asend")
    return {
        task
        for task in asyncio.all_tasks()
        if not task.done() and any(name in repr(task.get_coro()) for name in names)
    }


HEARTBEAT_S = 1.0


def heartbeats() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t.get_name() == "sse-heartbeat" and not t.done()}


@pytest.mark.parametrize("gap_ms", [30, 2000])
async def test_disconnected_clients_release_everything_at_once(
    make_api: Callable[..., Any], gap_ms: int
) -> None:
    """Closing the client connections ends their handlers, subscriptions and heartbeats right
    away (with 2 s between deltas, while they are parked waiting for the next event) and the
    run goes on undisturbed."""
    api = await make_api(sse_heartbeat_seconds=HEARTBEAT_S)
    thread_id, run_id = await api.start_run(f"/slow {gap_ms}\n" + TEXT[:48])
    await wait_for_seq(api, run_id, 1)
    store, runtime = api.runtime.store, api.runtime
    before = set(asyncio.all_tasks())
    streams: list[EventStream] = []
    async with contextlib.AsyncExitStack() as stack:
        for params in ({}, {"after_seq": "0"}, {}, {"after_seq": "1"}, {"after_seq": "99"}):
            streams.append(await stack.enter_async_context(connect(api, run_id, params=params)))
        for stream in streams[:3]:
            assert await stream.next_frame() is not None  # subscribed and delivering
        # Each stream follows its run; its credential is guarded without a subscription.
        await until(lambda: store.live.subscribers == 5)
        assert store.live.followed_streams == 1
        assert len(runtime.streams) == 5
        assert len(runtime.guards) == 5
        if gap_ms > 100:  # parked: each stream's heartbeat task starts after its interval
            await until(lambda: len(heartbeats()) == 5, timeout=3 * HEARTBEAT_S)
            assert sse_tasks()
    # The clients are gone: their connections closed with the context. Within half a
    # heartbeat interval: a heartbeat task left behind would still be asleep.
    await until(
        lambda: store.live.followed_streams == 0 and not runtime.streams and not sse_tasks(),
        timeout=HEARTBEAT_S / 2,
    )
    assert store.live.subscribers == 0
    assert len(runtime.guards) == 0
    run_tasks = {f"run-{run_id}", f"provider-{run_id}"}
    leftover = {
        t
        for t in set(asyncio.all_tasks()) - before
        if not t.done() and t.get_name() not in run_tasks
    }
    assert not leftover, leftover
    await asyncio.sleep(HEARTBEAT_S * 1.2)  # no heartbeat starts for a stream that ended
    assert not heartbeats()
    if gap_ms > 100:
        _, run = await api.request("GET", f"/v1/runs/{run_id}", expect=200)
        assert run["status"] == "running"  # released at once, not at the next event
        await cancel(api, run_id)
    else:
        assert (await api.wait_for(run_id))["status"] == "completed"
        assert deltas(await log_frames(api, run_id)) == await assistant_reply(api, thread_id)


class GatedBigDeltas:
    """A provider that waits for ``gate``, then streams ``count`` deltas of ``size`` chars."""

    def __init__(self, gate: asyncio.Event, count: int, size: int) -> None:
        self.gate, self.count, self.size = gate, count, size

    async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        await self.gate.wait()
        for i in range(self.count):
            yield TextDelta(chr(ord("a") + i % 26) * self.size)
        yield Usage(input_tokens=1, output_tokens=self.count)
        yield Stop("end_turn")


async def test_a_stalled_client_blocks_neither_the_run_nor_other_streams(
    make_api: Callable[..., Any],
) -> None:
    """A client that stops reading fills its socket buffers and its handler waits in a write;
    the run, the log and a second stream go on. When it reads again it gets everything."""
    gate = asyncio.Event()
    api = await make_api(provider_for=lambda route: GatedBigDeltas(gate, 400, 16 * 1024))
    _, run_id = await api.start_run("big")
    async with connect(api, run_id) as stalled:
        async with connect(api, run_id) as reader:
            gate.set()
            frames = await reader.read_to_end(timeout=30)
        run = await api.wait_for(run_id)
        assert run["status"] == "completed"
        log = await log_frames(api, run_id)
        assert frames == log
        assert len(log) > 400
        # ~6.5 MB went to the stalled client: its handler is still stuck in a write.
        assert len(api.runtime.streams) == 1
        assert await stalled.read_to_end(timeout=30) == log


def parked_followers(api: Api, run_id: str) -> int:
    """Connections whose live frames are written straight from each commit (eventstore/live.py
    sinks), on the run's stream."""
    tail = api.runtime.store.live._tails.get(run_stream(run_id))
    return 0 if tail is None else len(tail.sinks)


async def test_caught_up_followers_are_written_from_each_commit(api_on_both: Api) -> None:
    """A follower that has caught up is written from the commit itself, without waking its
    handler: the same bytes as the log's frames, each once, and the terminal frame (which its
    handler sends) still ends every stream."""
    api = api_on_both
    # The run waits for input, so both followers are parked before anything more is written.
    _, run_id = await api.start_run("/ask ready?\n/slow 5")
    await api.wait_for(run_id, {"waiting_for_input"})
    async with (
        connect(api, run_id) as first,
        connect(api, run_id, params={"after_seq": "2"}) as rest,
    ):
        await until(lambda: parked_followers(api, run_id) == 2, timeout=TIMEOUT)
        await api.request("POST", f"/v1/runs/{run_id}/input", json={"content": TEXT}, expect=200)
        frames = await first.read_to_end(), await rest.read_to_end()
    log = await log_frames(api, run_id)
    assert log[-1].type == "run.completed"
    assert len(log) > 10
    assert frames == (log, log[2:])
    assert parked_followers(api, run_id) == 0
    assert api.runtime.store.live.followed_streams == 0


async def test_an_http_1_0_client_gets_the_frames_unchunked_until_the_close(api: Api) -> None:
    """HTTP/1.0 has no chunked encoding: the body is the frames themselves, live ones written
    from the commit included, and the server closes the connection after the terminal one."""
    _, run_id = await api.start_run("/ask ready?\n/slow 5")
    await api.wait_for(run_id, {"waiting_for_input"})
    server = api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            f"GET /v1/runs/{run_id}/events HTTP/1.0\r\nHost: test\r\n"
            f"Authorization: Bearer {api.key}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        await until(lambda: parked_followers(api, run_id) == 1, timeout=TIMEOUT)
        await api.request("POST", f"/v1/runs/{run_id}/input", json={"content": TEXT}, expect=200)
        async with asyncio.timeout(TIMEOUT):
            body = await reader.read()  # to the server's close
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.0 200"), head
    assert b"transfer-encoding" not in head.lower(), head
    blocks = body.split(b"\n\n")
    assert blocks[0] == b": ping" and blocks[-1] == b"", body[:200]
    frames = [parse_block(block) for block in blocks[1:-1]]
    log = await log_frames(api, run_id)
    assert log[-1].type == "run.completed"
    assert [frame for frame in frames if frame is not None] == log


async def test_twenty_concurrent_subscribers_get_identical_complete_lists(api: Api) -> None:
    _, run_id = await api.start_run("/slow 20\n" + TEXT[:80])
    await wait_for_seq(api, run_id, 2)

    async def subscriber(index: int) -> list[Frame]:
        params = {"after_seq": "0"} if index % 2 else {}
        async with connect(api, run_id, params=params) as stream:
            return await stream.read_to_end()

    results = await asyncio.gather(*(subscriber(i) for i in range(20)))
    log = await log_frames(api, run_id)
    assert log[-1].type == "run.completed"
    assert all(result == log for result in results)
    assert api.runtime.store.live.followed_streams == 0
