"""A rebuild applies chunks of events with each projection's ``apply_many`` (rows read at once,
changed in memory, written back per table); the store applies each event with ``apply`` inside
its append. Generated logs of several threads, runs, orgs' users and webhook endpoints are
applied both ways, the bulk way in chunks of every size, and every table must be equal, row for
row, on both backends."""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import Database, RecordedEvent, connect_database
from projections import all_projections, table_rows
from projections.base import TableProjection
from projections.rebuild import ReplayError, apply_chunk, rebuild
from runs.events import (
    ApiKeyCreated,
    ApiKeyRevoked,
    DomainEvent,
    MessageAdded,
    MessageDelta,
    OrgCreated,
    PersonaRecorded,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunInputProvided,
    RunStarted,
    RunUsage,
    RunWaitingForInput,
    ThreadCreated,
    ThreadRunStarted,
    ToolCalled,
    ToolResult,
    UserCreated,
    UserDeleted,
    WebhookEndpointCreated,
    WebhookEndpointDeleted,
    WebhookEndpointDisabled,
    encode_event,
    org_stream,
    persona_stream,
    run_stream,
    thread_stream,
    webhook_stream,
)
from tests.postgres import fresh_schema

T0 = datetime(2026, 2, 27, 22, tzinfo=UTC)  # the log crosses days and a month's end
ORGS = ("org-a", "org-b")
USERS = {"org-a": ("user-1", "user-2"), "org-b": ("user-3",)}
COSTS = (0.0, 0.1, 0.2, 0.3, 1e-6, 0.0007, 2.5, 1 / 3)
STEPS = (  # (hypothesis leans towards the first entries)
    "start",
    "usage",
    "end",
    "usage",
    "start",
    "ask",
    "input",
    "delta",
    "tool",
    "message",
    "end",
    "thread",
    "endpoint",
    "endpoint_off",
    "account",
    "later",
)


class World:
    """Appends valid events of several streams to one log, as the service would."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.log: list[RecordedEvent] = []
        self.seqs: dict[str, int] = {}
        self.ms = 0
        self.threads: list[tuple[str, str, str]] = []  # thread id, org, creator
        self.active: dict[str, str] = {}  # thread id -> its live run
        self.runs: dict[str, dict[str, Any]] = {}  # live run id -> what its events need
        self.ended: list[str] = []
        self.endpoints: list[str] = []
        self.ids = itertools.count(1)

    def new_id(self, kind: str) -> str:
        return f"0190{next(self.ids):04d}-{kind}"

    def emit(self, stream: str, *events: DomainEvent) -> None:
        self.ms += self.draw(st.sampled_from((0, 1, 7, 1000, 3_600_000)))
        at = T0 + timedelta(milliseconds=self.ms)
        stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
        for event in events:
            seq = self.seqs[stream] = self.seqs.get(stream, 0) + 1
            new = encode_event(event)
            self.log.append(
                RecordedEvent(
                    len(self.log) + 1, stream, seq, new.type, new.data.decode(), stamp, "0" * 64
                )
            )

    def setup(self) -> None:
        for org in ORGS:
            self.emit(org_stream(org), OrgCreated(org_id=org, name=org))
            for user in USERS[org]:
                self.emit(
                    org_stream(org),
                    UserCreated(user_id=user, org_id=org, name=user, email=f"{user}@x.org"),
                    ApiKeyCreated(key_id=f"key-{user}", org_id=org, user_id=user, key_sha256=user),
                )
        self.emit(
            persona_stream("default"),
            PersonaRecorded(persona_id="default@1", key="default", version=1, content_sha256="h"),
        )

    def step(self, kind: str, pick: int) -> None:
        draw = self.draw
        live = sorted(self.runs)
        run_id = live[pick % len(live)] if live else None
        if kind == "thread" or not self.threads:
            org = draw(st.sampled_from(ORGS))
            user = draw(st.sampled_from(USERS[org]))
            thread_id = self.new_id("thread")
            self.threads.append((thread_id, org, user))
            self.emit(
                thread_stream(thread_id),
                ThreadCreated(
                    thread_id=thread_id,
                    org_id=org,
                    created_by_user_id=user,
                    title=draw(st.sampled_from((None, "t"))),
                ),
            )
        elif kind == "message":
            thread_id, org, user = self.threads[pick % len(self.threads)]
            self.add_message(thread_id, org, "user", user=user)
        elif kind == "start":
            free = [t for t in self.threads if t[0] not in self.active]
            if not free:
                return
            thread_id, org, user = free[pick % len(free)]
            new_run = self.new_id("run")
            route, multiplier = draw(st.sampled_from((("scripted", 1.0), ("priced", 2.5))))
            self.active[thread_id] = new_run
            self.runs[new_run] = {"thread": thread_id, "org": org, "calls": 0, "waiting": False}
            self.emit(thread_stream(thread_id), ThreadRunStarted(run_id=new_run))
            self.emit(
                run_stream(new_run),
                RunStarted(
                    run_id=new_run,
                    thread_id=thread_id,
                    org_id=org,
                    created_by_user_id=user,
                    trace_id="trace",
                    route_id=route,
                    provider="scripted",
                    model=draw(st.sampled_from(("m-1", "m-2"))),
                    persona_id=draw(st.sampled_from((None, "default@1"))),
                    credits_multiplier=multiplier,
                    retry_of=self.ended[pick % len(self.ended)]
                    if self.ended and pick % 3
                    else None,
                ),
            )
        elif run_id is not None and kind in ("usage", "delta", "tool", "ask", "input", "end"):
            self.run_step(kind, run_id)
        elif kind == "endpoint":
            endpoint_id = self.new_id("endpoint")
            self.endpoints.append(endpoint_id)
            events = draw(
                st.lists(
                    st.sampled_from(
                        ("run.completed", "run.failed", "run.cancelled", "run.waiting_for_input")
                    ),
                    min_size=1,
                    unique=True,
                )
            )
            self.emit(
                webhook_stream(endpoint_id),
                WebhookEndpointCreated(
                    endpoint_id=endpoint_id,
                    org_id=draw(st.sampled_from(ORGS)),
                    url="https://example.org/hook",
                    events=events,
                    created_by_user_id="user-1",
                ),
            )
        elif kind == "endpoint_off" and self.endpoints:
            endpoint_id = self.endpoints[pick % len(self.endpoints)]
            off: DomainEvent = (
                WebhookEndpointDeleted(endpoint_id=endpoint_id)
                if pick % 2
                else WebhookEndpointDisabled(endpoint_id=endpoint_id, reason="failing")
            )
            self.emit(webhook_stream(endpoint_id), off)
        elif kind == "account":
            if pick % 2:
                self.emit(org_stream("org-a"), ApiKeyRevoked(key_id="key-user-2"))
            else:
                self.emit(org_stream("org-b"), UserDeleted(user_id="user-3"))
        elif kind == "later":
            self.ms += 20 * 3_600_000

    def add_message(
        self, thread_id: str, org: str, role: str, user: str | None = None, run: str | None = None
    ) -> str:
        message_id = self.new_id("message")
        self.emit(
            thread_stream(thread_id),
            MessageAdded(
                message_id=message_id,
                thread_id=thread_id,
                org_id=org,
                role=role,
                content=self.draw(st.sampled_from(("hello", "", "dé jà 🎉"))),
                created_by_user_id=user,
                run_id=run,
            ),
        )
        return message_id

    def run_step(self, kind: str, run_id: str) -> None:
        draw = self.draw
        run = self.runs[run_id]
        stream = run_stream(run_id)
        if run["waiting"] and kind != "end":  # the user answers; the run works again
            run["waiting"] = False
            self.emit(stream, RunInputProvided(request_id="r", content="blue"))
        elif kind == "end":
            how = draw(st.sampled_from(("completed", "failed", "cancelled")))
            end: DomainEvent
            if how == "completed":
                message_id = self.add_message(run["thread"], run["org"], "assistant", run=run_id)
                end = RunCompleted(message_id=message_id)
            elif how == "failed":
                end = RunFailed(error_class="provider.error", message="it broke")
            else:
                end = RunCancelled()
            self.emit(stream, end)
            del self.runs[run_id]
            del self.active[run["thread"]]
            self.ended.append(run_id)
        elif kind == "usage":
            again = draw(st.booleans()) and run["calls"] > 0
            if not again:
                run["calls"] += 1
            self.emit(
                stream,
                RunUsage(
                    model=draw(st.sampled_from(("m-1", "m-2"))),
                    input_tokens=draw(st.integers(0, 5000)),
                    output_tokens=draw(st.integers(0, 900)),
                    cache_read_tokens=draw(st.sampled_from((0, 1024))),
                    cache_write_tokens=draw(st.sampled_from((0, 77))),
                    cost_usd=draw(st.sampled_from(COSTS)),
                    call=run["calls"] - (draw(st.integers(0, 1)) if run["calls"] > 1 else 0),
                    estimated=draw(st.booleans()),
                ),
            )
        elif kind == "delta":
            self.emit(stream, MessageDelta(content="text ", call=run["calls"] + 1))
        elif kind == "tool":
            self.emit(
                stream,
                ToolCalled(tool_call_id="c1", name="calculator"),
                ToolResult(tool_call_id="c1", name="calculator", output="42"),
            )
        elif kind == "ask":
            run["waiting"] = True
            self.emit(stream, RunWaitingForInput(request_id="r", kind="question", prompt="?"))


@st.composite
def logs(draw: st.DrawFn) -> list[RecordedEvent]:
    world = World(draw)
    world.setup()
    for kind, pick in draw(
        st.lists(st.tuples(st.sampled_from(STEPS), st.integers(0, 7)), min_size=10, max_size=80)
    ):
        world.step(kind, pick)
    return world.log


#: A run's start, for the replay-failure tests.
R1_STARTED = RunStarted(
    run_id="r1",
    thread_id="t1",
    org_id="org-a",
    created_by_user_id="user-1",
    trace_id="x",
    route_id="scripted",
    provider="scripted",
    model="m",
)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def two_locations(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """Two databases of one backend with the projections' (empty) tables; every example
    works in transactions it rolls back."""
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("bulk")
        locations = str(folder / "each.db"), str(folder / "bulk.db")
    else:
        url = request.getfixturevalue("pg_url")
        locations = fresh_schema(url), fresh_schema(url)
    for location in locations:
        db = connect_database(location)
        try:
            db.begin_schema()
            for projection in all_projections():
                projection.create(db)
            db.commit()
        finally:
            db.close()
    return locations


@contextlib.contextmanager
def rolled_back(location: str) -> Iterator[Database]:
    db = connect_database(location)
    try:
        # A plain write transaction: two schema transactions would wait for each other's lock.
        db.begin_write()
        yield db
    finally:
        db.rollback()
        db.close()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(log=logs(), size=st.integers(1, 60))
def test_bulk_apply_in_chunks_equals_apply_per_event(
    two_locations: tuple[str, str], log: list[RecordedEvent], size: int
) -> None:
    each_location, bulk_location = two_locations
    with rolled_back(each_location) as each, rolled_back(bulk_location) as bulk:
        projections = all_projections()
        for event in log:
            for projection in projections:
                projection.apply(each, event)
        bulk_projections = [p for p in all_projections() if isinstance(p, TableProjection)]
        handled = set().union(*(p.event_types for p in bulk_projections))
        chunkable = [e for e in log if e.type in handled]
        for start in range(0, len(chunkable), size):
            apply_chunk(bulk, bulk_projections, chunkable[start : start + size])
        for table in (t for p in projections for t in p.tables):
            assert table_rows(bulk, table) == table_rows(each, table), table


def test_the_logs_are_varied() -> None:
    """The generator reaches every table: runs that end each way, usage estimated and
    reported, webhook deliveries."""
    seen: dict[str, int] = {}

    @settings(max_examples=60, deadline=None, database=None, derandomize=True)
    @given(log=logs())
    def collect(log: list[RecordedEvent]) -> None:
        for event in log:
            seen[event.type] = seen.get(event.type, 0) + 1

    collect()
    for kind in (
        "run.completed",
        "run.failed",
        "run.cancelled",
        "run.usage",
        "run.input_provided",
        "webhook.endpoint_created",
        "webhook.endpoint_deleted",
    ):
        assert seen.get(kind), kind


def test_a_damaged_event_in_a_chunk_is_named(tmp_path: Path) -> None:
    """A chunk that cannot be applied is rolled back and applied event by event, so the error
    names the event (and nothing of it is left)."""

    source = connect_database(str(tmp_path / "log.db"))
    target = connect_database(str(tmp_path / "target.db"))
    try:
        source.begin_schema()
        source.create_log_schema()
        started = R1_STARTED
        events = [encode_event(started), encode_event(RunCompleted())]
        rows = [
            (1, run_stream("r1"), 1, events[0].type, events[0].data.decode(), "2026-01-01", "h"),
            (2, run_stream("r1"), 2, events[1].type, events[1].data.decode(), "2026-01-01", "h"),
            # Usage of a run that never started: the runs projection refuses it.
            (3, run_stream("r2"), 1, "run.usage", '{"model":"m"}', "2026-01-01", "h"),
        ]
        source.insert_events(rows)
        source.commit()
        with pytest.raises(ReplayError) as raised:
            rebuild(source, target, all_projections())
        assert raised.value.position == 3
        assert not target.table_exists("runs")  # the whole rebuild was rolled back
    finally:
        source.close()
        target.close()


@pytest.mark.parametrize("chunk", [1, 2, 5000])
def test_a_run_or_thread_created_twice_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """The bulk path does not read the rows of runs and threads created in the chunk (they
    cannot be there yet); a log that creates one twice, in one chunk or in two, still fails
    at the second creation, as applying it event by event does."""
    monkeypatch.setattr(sys.modules["projections.rebuild"], "_BATCH", chunk)
    started = R1_STARTED
    created = ThreadCreated(thread_id="t1", org_id="org-a", created_by_user_id="user-1")
    for events, twice in (
        ([(run_stream("r1"), started), (run_stream("r1"), RunCompleted())], started),
        ([(thread_stream("t1"), created)], created),
    ):
        log = str(tmp_path / f"{twice.TYPE}-{chunk}.db")
        source = connect_database(log)
        target = connect_database(log + ".target")
        try:
            source.begin_schema()
            source.create_log_schema()
            stream = events[0][0]
            rows = [
                (i, s, i, encode_event(e).type, encode_event(e).data.decode(), "2026-01-01", "h")
                for i, (s, e) in enumerate([*events, (stream, twice)], start=1)
            ]
            source.insert_events(rows)
            source.commit()
            with pytest.raises(ReplayError) as raised:
                rebuild(source, target, all_projections())
            assert raised.value.position == len(rows)
        finally:
            source.close()
            target.close()
