"""Schema-driven fuzzing: schemathesis generates requests from ``GET /openapi.json``.

The real app listens on a real TCP port (aiohttp's ``TestServer`` on its own event loop in a
background thread); each operation gets positive and negative cases from the document,
authenticated with the bootstrap key, with path ids drawn part of the time from threads and
runs that exist. Every response must: not be a 5xx, use a documented status, content type,
header and body schema, and — for every error — have the error shape with ``trace_id`` equal to
the ``X-Trace-Id`` header. SSE responses are parsed and each frame's JSON checked against
``SseFrame``.

Default run: ``EXAMPLES`` examples per operation and mode (>= 1,000 requests in all); set
``RUNLOG_FUZZ_EXAMPLES`` to run more.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from runs.config import load_config
from runs.openapi import document
from runs.service import Principal
from server import RUNTIME, create_app
from tests.api.conftest import LiveServer
from tests.conftest import ADMIN_KEY

EXAMPLES = int(os.environ.get("RUNLOG_FUZZ_EXAMPLES", "0")) or 50
# The default run replays the same examples every time; an opt-in run explores new ones.
DERANDOMIZE = "RUNLOG_FUZZ_EXAMPLES" not in os.environ
MIN_TOTAL_REQUESTS = 1000
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
TERMINAL = ("completed", "failed", "cancelled")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
REJECTED = ["400", "401", "404", "405", "409", "413", "415", "422", "429"]

_frame_validator = jsonschema_rs.validator_for(
    {**document()["components"]["schemas"]["SseFrame"], "additionalProperties": False}
)
_error_validator = jsonschema_rs.validator_for(
    {**document()["components"]["schemas"]["Error"], "additionalProperties": False}
)


class World:
    """The live server, a session authenticated with the bootstrap key, and ids that exist."""

    def __init__(self, live: LiveServer) -> None:
        self.live = live
        self.session = requests.Session()
        self.session.headers.update(AUTH)
        self.fuzz_session = requests.Session()  # schemathesis sets (or omits) Authorization
        self.thread_ids: list[str] = []
        self.run_ids: list[str] = []  # runs that have ended (safe to follow over SSE)
        self.waiting_run_ids: list[str] = []  # runs waiting for input, for POST …/input
        self.cancel_run_ids: list[str] = []  # a run waiting for input, for POST …:cancel, …/cancel
        self.foreign_thread_ids: list[str] = []
        # A failed run on a thread no other operation is pointed at, for POST …/retry.
        self.retry_run_ids: list[str] = []
        self.endpoint_ids: list[str] = []
        self.deletable_endpoint_ids: list[str] = []

    def post(self, path: str, body: Any = None) -> Any:
        response = self.session.post(self.live.url + path, json=body, timeout=30)
        assert response.status_code in (200, 201), (path, response.status_code, response.text)
        return response.json()

    def events(self, run_id: str, until: Callable[[str], bool]) -> None:
        """Follow the run's SSE stream until a frame's type satisfies ``until`` (no polling)."""
        url = f"{self.live.url}/v1/runs/{run_id}/events"
        with self.session.get(url, stream=True, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith(b"data: ") and until(msgspec.json.decode(line[6:])["type"]):
                    return
        raise AssertionError(f"run {run_id} ended without the awaited event")

    def populate(self) -> None:
        for content in ("hello", "/fail", '/tool calculator {"expression": "6*7"}'):
            thread_id = self.post("/v1/threads", {"title": content[:10]})["id"]
            self.post(f"/v1/threads/{thread_id}/messages", {"content": content})
            run_id = self.post(f"/v1/threads/{thread_id}/runs", {})["run_id"]
            self.events(run_id, lambda t: t in {f"run.{s}" for s in TERMINAL})
            self.thread_ids.append(thread_id)
            self.run_ids.append(run_id)
        for pool in (self.waiting_run_ids, self.waiting_run_ids, self.cancel_run_ids):
            thread_id = self.post("/v1/threads", {})["id"]
            self.post(f"/v1/threads/{thread_id}/messages", {"content": "/ask Which colour?"})
            run_id = self.post(f"/v1/threads/{thread_id}/runs", {})["run_id"]
            self.events(run_id, lambda t: t == "run.waiting_for_input")
            self.thread_ids.append(thread_id)
            pool.append(run_id)
        thread_id = self.post("/v1/threads", {})["id"]
        self.post(f"/v1/threads/{thread_id}/messages", {"content": "/fail"})
        run_id = self.post(f"/v1/threads/{thread_id}/runs", {})["run_id"]
        self.events(run_id, lambda t: t in {f"run.{s}" for s in TERMINAL})
        self.retry_run_ids.append(run_id)
        # A thread of another org: for this key it must look exactly like a missing one.
        runtime = self.live.app[RUNTIME]
        accounts = runtime.accounts

        async def foreign() -> str:
            org_id = await accounts.create_org("other")
            user_id = await accounts.create_user(org_id, "mallory", "mallory@example.com")
            created, _ = await runtime.service.create_thread(Principal(user_id, org_id), "theirs")
            return created.thread_id

        self.foreign_thread_ids.append(self.live.run(foreign()))
        # Webhook endpoints (to a closed local port: deliveries fail fast and harmlessly);
        # DELETE gets its own, so the other operations keep finding theirs.
        for pool in (self.endpoint_ids, self.endpoint_ids, self.deletable_endpoint_ids):
            hook = {"url": "http://127.0.0.1:9/hook", "events": ["run.completed"]}
            pool.append(self.post("/v1/webhook-endpoints", hook)["id"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    db = Path(tmp_path_factory.mktemp("fuzz")) / "runlog.db"
    config = load_config(
        None,
        env={},
        overrides={
            "db": str(db),
            "delta_coalesce_ms": 0,
            "secret_key": "fuzz-secret",
            "webhooks_allow_private": True,
        },
    )
    app = create_app(config, env={"RUNLOG_BOOTSTRAP_API_KEY": ADMIN_KEY})
    with LiveServer(app) as live:
        world = World(live)
        world.populate()
        yield world
        world.session.close()
        world.fuzz_session.close()


SCHEMA = schemathesis.openapi.from_dict(
    document(),
    config=schemathesis.Config.from_dict(
        {
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTED}},
            "auth": {"openapi": {"bearer": {"bearer": ADMIN_KEY}}, "auto-signup": False},
        }
    ),
)
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}


def _modes(label: str) -> list[GenerationMode]:
    operation = OPERATIONS[label]
    has_input = bool(list(operation.iter_parameters())) or bool(operation.body)
    return (
        [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        if has_input
        else [GenerationMode.POSITIVE]
    )


def check_error_and_frames(response: schemathesis.Response) -> None:
    """Every error has the error shape and the trace id of its header; SSE frames are SseFrames."""
    trace_ids = response.headers.get("x-trace-id", [])
    assert len(trace_ids) == 1, "exactly one X-Trace-Id header"
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code >= 400:
        body = msgspec.json.decode(response.content)
        _error_validator.validate(body)
        assert body["trace_id"] == trace_ids[0]
        if "field" in body["details"]:
            assert body["code"].startswith("validation."), body
    elif content_type.startswith("text/event-stream"):
        frames = [line[6:] for line in response.content.splitlines() if line.startswith(b"data: ")]
        for frame in frames:
            _frame_validator.validate(msgspec.json.decode(frame))


def _use_real_ids(case: Any, world: World, data: st.DataObject) -> None:
    """Point path ids at existing resources most of the time (positive cases only)."""
    params = case.path_parameters or {}
    if "thread_id" in params:
        pool = world.thread_ids + world.foreign_thread_ids
        choice = data.draw(st.sampled_from([None, *pool]), label="thread_id")
        if choice is not None:
            params["thread_id"] = choice
    if "endpoint_id" in params:
        pool = world.endpoint_ids
        if case.method.upper() == "DELETE":
            pool = world.deletable_endpoint_ids
        choice = data.draw(st.sampled_from([None, *pool]), label="endpoint_id")
        if choice is not None:
            params["endpoint_id"] = choice
    if "run_id" in params:
        pool = list(world.run_ids)  # following a live run over SSE would not end
        if case.path.endswith("/retry"):
            pool = list(world.retry_run_ids)  # the others were completed, or moved on
        elif case.path.endswith("/input"):
            pool += world.waiting_run_ids
        elif case.path.endswith((":cancel", "/cancel")):
            pool += world.cancel_run_ids
        elif not case.path.endswith(("/events", "/retry")):
            pool += world.waiting_run_ids + world.cancel_run_ids
        choice = data.draw(st.sampled_from([None, *pool]), label="run_id")
        if choice is not None:
            params["run_id"] = choice


@pytest.mark.parametrize(
    ("label", "mode"),
    [(label, mode) for label in OPERATIONS for mode in _modes(label)],
    ids=lambda v: v.value if isinstance(v, GenerationMode) else v,
)
def test_operation(world: World, label: str, mode: GenerationMode) -> None:
    operation = OPERATIONS[label]
    checks = [*CHECKS, negative_data_rejection] if mode.is_negative else CHECKS
    statuses: Counter[int] = Counter()  # this test's own: nothing shared between tests

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def fuzz(case: Any, data: st.DataObject) -> None:
        if mode.is_positive:
            _use_real_ids(case, world, data)
        response = case.call(base_url=world.live.url, session=world.fuzz_session, timeout=30)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=checks)
        check_error_and_frames(response)

    fuzz()
    requests = sum(statuses.values())
    print(f"fuzz {label} {mode.value}: {requests} requests {dict(sorted(statuses.items()))}")
    assert requests >= _minimum_requests(operation), (label, mode.value, requests)
    if mode.is_positive and "{" in label:
        # Real ids were hit: some positive cases reached an existing resource.
        assert any(code < 300 for code in statuses), (label, dict(statuses))


def _minimum_requests(operation: Any) -> int:
    """Hypothesis stops early only when it has tried every distinct input, which happens for
    operations with nothing to vary, or whose only parameters are enums (then it can stop
    after every combination); any other operation with parameters or a body gets them all."""
    definition = operation.definition.raw
    parameters = definition.get("parameters") or []
    if definition.get("requestBody"):
        return EXAMPLES
    if not parameters:
        return 1
    choices = [len(p["schema"]["enum"]) for p in parameters if "enum" in p.get("schema", {})]
    if len(choices) == len(parameters):
        return min(EXAMPLES, math.prod(choices))
    return EXAMPLES


def test_the_fuzz_run_sends_at_least_a_thousand_requests() -> None:
    """What the per-operation minimums add up to, so the default run is a real fuzz."""
    total = sum(_minimum_requests(OPERATIONS[label]) for label in OPERATIONS for _ in _modes(label))
    assert total >= MIN_TOTAL_REQUESTS, total


# -- raw bodies: what schemathesis does not send (it always sends well-formed JSON) ----------

#: The body operations and their fields.
BODY_FIELDS = {
    "/v1/auth/login": ("login", "password"),
    "/v1/threads": ("title",),
    "/v1/threads/{thread}/messages": ("content",),
    "/v1/threads/{thread}/runs": ("route_id", "persona_id"),
    "/v1/runs/{run}/input": ("content",),
}
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_junk = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc", b"\x00", b"\x1f"]) | (
    st.binary(min_size=1, max_size=4)
)


def _bodies(fields: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    objects = st.fixed_dictionaries({}, optional=dict.fromkeys(fields, _json_values)).map(
        lambda value: json.dumps(value, allow_nan=True).encode()
    )
    # JSON with bytes spliced in anywhere: broken syntax, invalid UTF-8, control characters.
    mutated = st.tuples(objects, _junk, st.integers(0, 100)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
    )
    # Raw bytes inside a field's string value, where only UTF-8 decoding can refuse them.
    spliced = st.builds(
        lambda name, text, junk: b'{"%s": "%s%s"}' % (name.encode(), text.encode(), junk),
        st.sampled_from(fields),
        st.text(st.characters(codec="ascii", exclude_characters='"\\'), max_size=5),
        _junk,
    )
    return st.one_of(objects, mutated, spliced, st.binary(max_size=200))


RAW_REQUESTS = st.one_of(
    [st.tuples(st.just(path), _bodies(fields)) for path, fields in BODY_FIELDS.items()]
)


def test_raw_bodies_never_cause_a_server_error(world: World) -> None:
    """Arbitrary bytes, JSON with NaN and wrong types, and JSON with bytes spliced in (invalid
    UTF-8, control characters, broken syntax), as the body of every operation that reads one."""
    run_id = world.waiting_run_ids[-1]
    thread_id = world.thread_ids[0]

    @settings(
        max_examples=EXAMPLES * 2,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=RAW_REQUESTS)
    def fuzz(request: tuple[str, bytes]) -> None:
        path, body = request
        response = world.session.post(
            world.live.url + path.format(thread=thread_id, run=run_id),
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code < 500, (response.status_code, response.text)
        received = schemathesis.Response.from_requests(response, verify=True)
        check_error_and_frames(received)

    fuzz()
