"""``POST /v1/runs/{run_id}/retry`` through the real app: a new run answers the same user turn
of a failed or cancelled run, without the old run's partial output; refused (409) for a live,
completed or superseded run, and 404 across orgs."""

from __future__ import annotations

import asyncio
import json

from runs.events import run_stream
from tests.agent.conftest import (
    FAKE_ENV,
    MakeApi,
    anthropic_route,
    events_of,
    only,
    wait_for_event,
)
from tests.agent.fake_anthropic import FakeAnthropic, HttpError, Sse, text_events
from tests.conftest import Api


async def retry(api: Api, run_id: str, key: str | None = None) -> tuple[int, dict[str, object]]:
    status, body = await api.request("POST", f"/v1/runs/{run_id}/retry", key=key)
    return status, body


async def test_retry_of_a_cancelled_run_answers_the_same_turn_without_its_partial_output(
    make_api: MakeApi, fake: FakeAnthropic
) -> None:
    api = await make_api(routes=[anthropic_route(fake.url)], env=FAKE_ENV)
    partial = text_events(["Half of an ans", "wer that never"])[:5]
    fake.add(Sse(partial, hold=True), Sse(text_events(["A whole answer."])))
    thread_id, old = await api.start_run("what is the answer?")
    await wait_for_event(api, old, "message.delta")
    await api.request("POST", f"/v1/runs/{old}:cancel", expect=200)

    async with api.client.post(
        f"/v1/runs/{old}/retry", headers=api.headers(**{"X-Trace-Id": "retry-trace-01"})
    ) as response:
        assert response.status == 201
        created = await response.json()
    assert created == {"run_id": created["run_id"], "trace_id": "retry-trace-01"}
    new = created["run_id"]
    assert new != old
    run = await api.wait_for(new)
    assert run["status"] == "completed"
    assert (run["thread_id"], run["route_id"], run["persona_id"]) == (
        thread_id,
        "fake",
        "default@1",
    )
    assert run["retry_of"] == old
    assert run["trace_id"] == "retry-trace-01"
    [started, *_] = await events_of(api, new)
    assert started[0] == "run.started"
    assert started[1]["retry_of"] == old

    # The new call saw the user's turn and nothing of the cut answer.
    assert len(fake.requests) == 2
    assert fake.requests[1]["messages"] == [{"role": "user", "content": "what is the answer?"}]
    assert "Half" not in json.dumps(fake.requests[1])
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert [(m["role"], m["content"], m["run_id"]) for m in messages] == [
        ("user", "what is the answer?", None),
        ("assistant", "A whole answer.", new),
    ]
    # The old run is as it was.
    _, old_run = await api.request("GET", f"/v1/runs/{old}", expect=200)
    assert (old_run["status"], old_run["retry_of"]) == ("cancelled", None)


async def test_retry_of_a_failed_run_and_of_its_retry(make_api: MakeApi) -> None:
    api = await make_api()
    thread_id, first = await api.start_run("/fail")
    assert (await api.wait_for(first))["status"] == "failed"
    status, body = await retry(api, first)
    assert status == 201, body
    second = str(body["run_id"])
    assert (await api.wait_for(second))["status"] == "failed"  # the same turn fails the same way
    # Only the thread's latest run may be retried: the first one is superseded now.
    status, body = await retry(api, first)
    assert (status, body["code"]) == (409, "runs.not_latest")
    assert body["details"]["latest_run_id"] == second
    status, body = await retry(api, second)
    assert status == 201
    third = str(body["run_id"])
    await api.wait_for(third)
    _, runs = await api.request("GET", f"/v1/threads/{thread_id}/runs", expect=200)
    assert [r["run_id"] for r in runs] == [third, second, first]
    chain = [
        (await api.request("GET", f"/v1/runs/{r}", expect=200))[1]["retry_of"]
        for r in (third, second, first)
    ]
    assert chain == [second, first, None]


async def test_retry_is_refused_for_live_completed_and_moved_on_runs(make_api: MakeApi) -> None:
    api = await make_api()
    _, live = await api.start_run("/slow 100\nstill going")
    status, body = await retry(api, live)
    assert (status, body["code"]) == (409, "runs.not_retryable")
    assert body["details"]["status"] == "running"
    await api.request("POST", f"/v1/runs/{live}:cancel", expect=200)

    _, done = await api.start_run("finished")
    assert (await api.wait_for(done))["status"] == "completed"
    status, body = await retry(api, done)
    assert (status, body["code"]) == (409, "runs.not_retryable")

    # The user spoke again after the failure: retrying would not answer the same turn.
    thread_id, failed = await api.start_run("/fail")
    await api.wait_for(failed)
    await api.add_message(thread_id, "never mind, something else")
    status, body = await retry(api, failed)
    assert (status, body["code"]) == (409, "runs.not_latest")
    _, runs = await api.request("GET", f"/v1/threads/{thread_id}/runs", expect=200)
    assert [r["run_id"] for r in runs] == [failed]  # nothing was started


async def test_retry_across_orgs_is_not_found(make_api: MakeApi) -> None:
    api = await make_api()
    _, failed = await api.start_run("/fail")
    await api.wait_for(failed)
    other = await api.new_org_key()
    status, body = await retry(api, failed, key=other)
    assert (status, body["code"]) == (404, "not_found")
    status, body = await retry(api, "01a222e0-5694-70d2-9042-2dade0db901d")
    assert (status, body["code"]) == (404, "not_found")
    assert await api.runtime.store.last_seq(run_stream(failed)) == len(await events_of(api, failed))


async def test_concurrent_retries_start_one_run(make_api: MakeApi) -> None:
    api = await make_api()
    thread_id, failed = await api.start_run("/fail")
    await api.wait_for(failed)
    results = await asyncio.gather(*(retry(api, failed) for _ in range(6)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [201] + [409] * 5, results
    _, runs = await api.request("GET", f"/v1/threads/{thread_id}/runs", expect=200)
    assert len(runs) == 2


async def test_a_provider_failure_then_a_retry_that_succeeds(
    make_api: MakeApi, fake: FakeAnthropic
) -> None:
    api = await make_api(routes=[anthropic_route(fake.url, max_attempts=1)], env=FAKE_ENV)
    fake.add(HttpError(529, "overloaded_error", "Overloaded"), Sse(text_events(["Fine now."])))
    thread_id, failed = await api.start_run("hello?")
    run = await api.wait_for(failed)
    assert (run["status"], run["error_class"]) == ("failed", "provider.overloaded")
    assert only(await events_of(api, failed), "run.usage") == []  # a refused call is not billed
    status, body = await retry(api, failed)
    assert status == 201
    assert (await api.wait_for(str(body["run_id"])))["status"] == "completed"
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert [m["content"] for m in messages] == ["hello?", "Fine now."]
