"""Errors over HTTP: one shape, a trace id on every response, validation naming the field,
no stack traces, unexpected errors logged with the trace id."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from projections.queries import Queries
from tests.conftest import Api

ERROR_KEYS = {"code", "message", "details", "trace_id"}


async def call(
    api: Api, method: str, path: str, *, key: str | None = None, **kwargs: Any
) -> tuple[int, Any, str]:
    """``(status, body, X-Trace-Id)``; the body must be JSON."""
    headers = kwargs.pop("headers", None) or api.headers(key)
    async with api.client.request(method, path, headers=headers, **kwargs) as r:
        assert r.content_type == "application/json", (r.status, await r.text())
        return r.status, await r.json(), r.headers.get("X-Trace-Id", "")


def assert_error(status: int, body: Any, trace: str, expected: int, code: str) -> None:
    assert status == expected, body
    assert set(body) == ERROR_KEYS, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["details"], dict)
    assert trace
    assert body["trace_id"] == trace


async def test_every_response_carries_a_trace_id(api: Api) -> None:
    for method, path in [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v1/threads")]:
        async with api.client.request(method, path, headers=api.headers()) as r:
            assert r.status == 200
            assert len(r.headers["X-Trace-Id"]) >= 8
    # Two responses never share one.
    traces = set()
    for _ in range(3):
        async with api.client.get("/healthz") as r:
            traces.add(r.headers["X-Trace-Id"])
    assert len(traces) == 3


async def test_malformed_json_is_400(api: Api) -> None:
    status, body, trace = await call(
        api,
        "POST",
        "/v1/threads",
        data=b'{"title": ',
        headers=api.headers(**{"Content-Type": "application/json"}),
    )
    assert_error(status, body, trace, 400, "validation.json")


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/v1/threads", {"title": 5}, "title"),
        ("/v1/threads", {"title": "x" * 501}, "title"),
        ("/v1/threads", {"titel": "typo"}, "unknown_field:titel"),
        ("messages", {}, "content"),
        ("messages", {"content": 7}, "content"),
        ("messages", {"content": ""}, "content"),
        ("messages", {"content": "x", "role": "assistant"}, "unknown_field:role"),
        ("runs", {"route_id": 5}, "route_id"),
        ("runs", {"persona_id": ["a"]}, "persona_id"),
        ("runs", {"model": "x"}, "unknown_field:model"),
        ("/v1/auth/login", {"login": "admin"}, "password"),
        ("/v1/auth/login", {"login": 1, "password": "x"}, "login"),
        ("input", {}, "content"),
        ("input", {"content": 1}, "content"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(
    api: Api, path: str, payload: dict[str, Any], field: str
) -> None:
    thread_id = await api.create_thread()
    _, run_id = await api.start_run("/ask what?")
    path = {
        "messages": f"/v1/threads/{thread_id}/messages",
        "runs": f"/v1/threads/{thread_id}/runs",
        "input": f"/v1/runs/{run_id}/input",
    }.get(path, path)
    status, body, trace = await call(api, "POST", path, json=payload)
    # A name the client invented is reported in details, never made part of the code.
    code, _, invented = field.rpartition(":")
    field = invented or field
    assert_error(status, body, trace, 400, f"validation.{code or field}")
    assert body["details"]["field"] == field
    assert field in body["message"]
    await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42"])
async def test_a_body_that_is_not_an_object_is_400(api: Api, body: bytes) -> None:
    status, error, trace = await call(
        api,
        "POST",
        "/v1/threads",
        data=body,
        headers=api.headers(**{"Content-Type": "application/json"}),
    )
    assert status == 400
    assert error["code"].startswith("validation.")
    assert error["trace_id"] == trace


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_non_json_content_type_is_415(api: Api, content_type: str) -> None:
    status, body, trace = await call(
        api,
        "POST",
        "/v1/threads",
        data=b'{"title": "x"}',
        headers=api.headers(**{"Content-Type": content_type}),
    )
    assert_error(status, body, trace, 415, "validation.content_type")


async def test_unknown_route_and_persona_are_422(api: Api) -> None:
    thread_id = await api.create_thread()
    path = f"/v1/threads/{thread_id}/runs"
    status, body, trace = await call(api, "POST", path, json={"route_id": "nope"})
    assert_error(status, body, trace, 422, "policy.route_not_found")
    assert body["details"]["route_id"] == "nope"
    for persona in ["nobody", "default@99"]:
        status, body, trace = await call(api, "POST", path, json={"persona_id": persona})
        assert_error(status, body, trace, 422, "validation.persona_not_found")
        assert body["details"]["field"] == "persona_id"
    # Nothing was started.
    _, runs = await api.request("GET", f"{path}", expect=200)
    assert runs == []


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/threads/x/y/z", "/nope", "/v1"])
async def test_unknown_path_is_404(api: Api, path: str) -> None:
    status, body, trace = await call(api, "GET", path)
    assert_error(status, body, trace, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/threads"),
        ("PUT", "/v1/threads/{thread}"),
        ("DELETE", "/v1/runs/{run}"),
        ("GET", "/v1/runs/{run}:cancel"),
        ("GET", "/v1/auth/login"),
        ("POST", "/healthz"),
        ("PATCH", "/v1/runs"),
    ],
)
async def test_wrong_method_is_405(api: Api, method: str, path: str) -> None:
    thread_id, run_id = await api.start_run("x")
    path = path.format(thread=thread_id, run=run_id)
    status, body, trace = await call(api, method, path)
    assert status == 405
    assert set(body) == ERROR_KEYS
    assert body["trace_id"] == trace


LIST_PATHS = ["/v1/threads", "/v1/runs", "messages", "thread_runs"]


@pytest.mark.parametrize("path", LIST_PATHS)
@pytest.mark.parametrize("limit", ["0", "201", "abc", "-1", "", "1.5", "99999"])
async def test_bad_limit_is_400(api: Api, path: str, limit: str) -> None:
    thread_id = await api.create_thread()
    path = {
        "messages": f"/v1/threads/{thread_id}/messages",
        "thread_runs": f"/v1/threads/{thread_id}/runs",
    }.get(path, path)
    status, body, trace = await call(api, "GET", f"{path}?limit={limit}")
    assert_error(status, body, trace, 400, "validation.limit")
    assert body["details"]["field"] == "limit"


@pytest.mark.parametrize("path", LIST_PATHS)
async def test_limit_bounds_are_accepted(api: Api, path: str) -> None:
    thread_id = await api.create_thread()
    path = {
        "messages": f"/v1/threads/{thread_id}/messages",
        "thread_runs": f"/v1/threads/{thread_id}/runs",
    }.get(path, path)
    for limit in ("1", "200"):
        await api.request("GET", f"{path}?limit={limit}", expect=200)


@pytest.mark.parametrize("path", ["/v1/threads", "/v1/runs"])
@pytest.mark.parametrize("before", ["abc", "", "01A222E0-5694-70D2-9042-2DADE0DB901D", "1"])
async def test_bad_before_is_400(api: Api, path: str, before: str) -> None:
    status, body, trace = await call(api, "GET", f"{path}?before={before}")
    assert_error(status, body, trace, 400, "validation.before")


@pytest.mark.parametrize("value", ["done", "", "RUNNING", "running,failed"])
async def test_bad_status_is_400(api: Api, value: str) -> None:
    status, body, trace = await call(api, "GET", f"/v1/runs?status={value}")
    assert_error(status, body, trace, 400, "validation.status")


ID_ROUTES = [
    ("GET", "/v1/threads/{id}"),
    ("GET", "/v1/threads/{id}/messages"),
    ("POST", "/v1/threads/{id}/messages"),
    ("GET", "/v1/threads/{id}/runs"),
    ("POST", "/v1/threads/{id}/runs"),
    ("GET", "/v1/runs/{id}"),
    ("POST", "/v1/runs/{id}:cancel"),
    ("POST", "/v1/runs/{id}/input"),
    ("GET", "/v1/runs/{id}/events"),
]
BODIES = {"messages": {"content": "x"}, "input": {"content": "x"}, "runs": {}}


def body_for(method: str, path: str) -> Any:
    if method != "POST":
        return None
    return next((b for suffix, b in BODIES.items() if path.endswith(suffix)), None)


@pytest.mark.parametrize(("method", "path"), ID_ROUTES)
@pytest.mark.parametrize(
    "bad_id",
    [
        "nope",
        "123",
        "01A222E0-5694-70D2-9042-2DADE0DB901D",  # upper case is not how ids are written
        "01a222e0569470d290422dade0db901d",
        "%27%20OR%201%3D1",
        "x" * 300,
    ],
)
async def test_malformed_ids_in_paths_are_404(
    api: Api, method: str, path: str, bad_id: str
) -> None:
    path = path.format(id=bad_id)
    status, body, trace = await call(api, method, path, json=body_for(method, path))
    assert_error(status, body, trace, 404, "not_found")


@pytest.mark.parametrize(("method", "path"), ID_ROUTES)
async def test_well_formed_unknown_ids_are_404(api: Api, method: str, path: str) -> None:
    path = path.format(id=str(uuid.uuid4()))
    status, body, trace = await call(api, method, path, json=body_for(method, path))
    assert_error(status, body, trace, 404, "not_found")


async def test_unexpected_error_is_500_without_a_stack_trace_and_logged(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(self: Queries, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(Queries, "threads", boom)
    with capture_logs() as logs:
        async with api.client.get("/v1/threads", headers=api.headers()) as r:
            status = r.status
            text = await r.text()
            trace = r.headers["X-Trace-Id"]
    assert status == 500
    body = json.loads(text)
    assert set(body) == ERROR_KEYS
    assert body["code"] == "internal.error"
    assert body["trace_id"] == trace
    for leak in ("Traceback", "RuntimeError", "secret internals", "server.py", 'File "'):
        assert leak not in text
    failed = [e for e in logs if e["event"] == "request.failed"]
    assert len(failed) == 1
    assert failed[0]["log_level"] == "error"
    assert failed[0]["exc_info"] is True
    request_lines = [e for e in logs if e["event"] == "request"]
    assert [(e["status"], e["route"], e["method"]) for e in request_lines] == [
        (500, "/v1/threads", "GET")
    ]
    assert request_lines[0]["duration_ms"] >= 0
    # The service still works afterwards.
    monkeypatch.undo()
    await api.request("GET", "/v1/threads", expect=200)


async def test_unexpected_error_log_line_carries_the_trace_id(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the production processors (contextvars merged) the logged error names the trace."""

    async def boom(self: Queries, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(Queries, "run", boom)
    _, run_id = await api.start_run("x")
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with api.client.get(f"/v1/runs/{run_id}", headers=api.headers()) as r:
            assert r.status == 500
            trace = r.headers["X-Trace-Id"]
            assert (await r.json())["trace_id"] == trace
    (failed,) = [e for e in logs if e["event"] == "request.failed"]
    assert failed["trace_id"] == trace
    (line,) = [e for e in logs if e["event"] == "request"]
    assert line["trace_id"] == trace
    assert line["status"] == 500
