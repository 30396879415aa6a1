"""One structlog line per request: method, route template, status, duration, trace id, org and
user ids, the run id where there is one — never a raw path with ids, never a token."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from runs.auth import key_sha256
from tests.conftest import ADMIN_KEY, Api

FIELDS = {"method", "route", "status", "duration_ms", "trace_id", "org_id", "user_id", "run_id"}


async def lines_of(api: Api, method: str, path: str, **kwargs: Any) -> tuple[list[dict], Any]:
    with capture_logs() as logs:
        async with api.client.request(method, path, **kwargs) as r:
            body = await r.json()
            trace = r.headers["X-Trace-Id"]
    lines = [e for e in logs if e["event"] == "request"]
    assert len(lines) == 1, lines
    assert lines[0]["trace_id"] == trace
    return lines, body


async def test_a_run_request_logs_its_route_template_ids_and_run(api: Api) -> None:
    admin = await api.runtime.queries.api_key_by_hash(key_sha256(ADMIN_KEY))
    assert admin is not None
    thread_id = await api.create_thread()
    await api.add_message(thread_id, "hi")

    (created,), body = await lines_of(
        api, "POST", f"/v1/threads/{thread_id}/runs", json={}, headers=api.headers()
    )
    run_id = body["run_id"]
    assert set(created) >= FIELDS
    assert created["route"] == "/v1/threads/{thread_id}/runs"
    assert created["method"] == "POST"
    assert created["status"] == 201
    assert created["run_id"] == run_id  # the run the request created
    assert created["org_id"] == admin["org_id"]
    assert created["user_id"] == admin["user_id"]
    assert created["duration_ms"] >= 0

    (line,), _ = await lines_of(api, "GET", f"/v1/runs/{run_id}", headers=api.headers())
    assert line["route"] == "/v1/runs/{run_id}"
    assert line["run_id"] == run_id
    assert line["status"] == 200
    await api.wait_for(run_id)

    (cancel,), _ = await lines_of(api, "POST", f"/v1/runs/{run_id}:cancel", headers=api.headers())
    assert cancel["route"] == "/v1/runs/{run_id}:cancel"
    assert cancel["run_id"] == run_id
    for logged in (created, line, cancel):
        text = repr(logged)
        assert ADMIN_KEY not in text
        assert "Bearer" not in text
        assert "path" not in logged
        assert thread_id not in text  # ids appear only as the fields above


async def test_refused_and_unmatched_requests_log_no_raw_path(api: Api) -> None:
    (refused,), body = await lines_of(
        api, "GET", "/v1/threads", headers={"Authorization": "Bearer rl_not_a_real_key"}
    )
    assert body["code"] == "auth.unauthorized"
    assert refused["status"] == 401
    assert refused["route"] == "/v1/threads"
    assert refused["org_id"] is None
    assert refused["user_id"] is None
    assert "rl_not_a_real_key" not in repr(refused)

    (unmatched,), _ = await lines_of(api, "GET", "/v1/secret-looking/abc123", headers=api.headers())
    assert unmatched["status"] == 404
    assert unmatched["route"] == "unmatched"
    assert "abc123" not in repr(unmatched)

    (bad_id,), _ = await lines_of(api, "GET", "/v1/runs/not-an-id", headers=api.headers())
    assert bad_id["status"] == 404
    assert bad_id["route"] == "/v1/runs/{run_id}"
    assert bad_id["run_id"] is None  # only a well-formed id is logged
