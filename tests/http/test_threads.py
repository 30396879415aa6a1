"""Threads and messages over HTTP: exact shapes, ordering and paging."""

from __future__ import annotations

from typing import Any

from runs.auth import key_sha256
from runs.ids import is_id
from tests.conftest import ADMIN_KEY, Api

THREAD_KEYS = {"id", "org_id", "created_by_user_id", "title", "created_at", "active_run_id"}
# The Runs API's message shape; ``run_id`` (which run wrote an assistant message) is our one extra.
MESSAGE_KEYS = {"id", "org_id", "thread_id", "created_by_user_id", "role", "content", "created_at"}


async def admin_ids(api: Api) -> tuple[str, str]:
    """``(org_id, user_id)`` of the bootstrap admin key."""
    key = await api.runtime.queries.api_key_by_hash(key_sha256(ADMIN_KEY))
    assert key is not None
    return key["org_id"], key["user_id"]


def is_timestamp(value: Any) -> bool:
    return isinstance(value, str) and value.endswith("Z") and "T" in value


async def test_create_thread_returns_the_spec_shape(api: Api) -> None:
    org_id, user_id = await admin_ids(api)
    status, body = await api.request("POST", "/v1/threads", json={"title": "first"})
    assert status == 201
    assert set(body) == THREAD_KEYS
    assert is_id(body["id"])
    assert body["org_id"] == org_id
    assert body["created_by_user_id"] == user_id
    assert body["title"] == "first"
    assert is_timestamp(body["created_at"])
    assert body["active_run_id"] is None


async def test_create_thread_without_body_or_title_has_null_title(api: Api) -> None:
    async with api.client.post("/v1/threads", headers=api.headers()) as r:
        assert r.status == 201
        assert (await r.json())["title"] is None
    _, body = await api.request("POST", "/v1/threads", json={}, expect=201)
    assert body["title"] is None


async def test_get_thread_returns_what_create_returned(api: Api) -> None:
    _, created = await api.request("POST", "/v1/threads", json={"title": "x"}, expect=201)
    _, got = await api.request("GET", f"/v1/threads/{created['id']}", expect=200)
    assert got == created


async def test_list_threads_newest_first_with_limit_and_before(api: Api) -> None:
    ids = [await api.create_thread(f"t{i}") for i in range(7)]
    newest_first = list(reversed(ids))

    _, everything = await api.request("GET", "/v1/threads", expect=200)
    assert [t["id"] for t in everything] == newest_first
    assert all(set(t) == THREAD_KEYS for t in everything)

    seen: list[str] = []
    before: str | None = None
    pages = 0
    while True:
        query = "limit=3" + (f"&before={before}" if before else "")
        _, page = await api.request("GET", f"/v1/threads?{query}", expect=200)
        assert len(page) <= 3
        if not page:
            break
        pages += 1
        seen += [t["id"] for t in page]
        before = page[-1]["id"]
    assert seen == newest_first
    assert pages == 3

    _, one = await api.request("GET", "/v1/threads?limit=1", expect=200)
    assert [t["id"] for t in one] == [ids[-1]]
    _, after_oldest = await api.request("GET", f"/v1/threads?before={ids[0]}", expect=200)
    assert after_oldest == []


async def test_list_threads_defaults_to_50(api: Api) -> None:
    for _ in range(52):
        await api.create_thread()
    _, page = await api.request("GET", "/v1/threads", expect=200)
    assert len(page) == 50
    _, page = await api.request("GET", "/v1/threads?limit=200", expect=200)
    assert len(page) == 52


async def test_add_message_returns_the_spec_shape(api: Api) -> None:
    org_id, user_id = await admin_ids(api)
    thread_id = await api.create_thread()
    status, body = await api.request(
        "POST", f"/v1/threads/{thread_id}/messages", json={"content": "hi there"}
    )
    assert status == 201
    assert set(body) == MESSAGE_KEYS | {"run_id"}
    assert is_id(body["id"])
    assert body["org_id"] == org_id
    assert body["thread_id"] == thread_id
    assert body["created_by_user_id"] == user_id
    assert body["role"] == "user"
    assert body["content"] == "hi there"
    assert body["run_id"] is None
    assert is_timestamp(body["created_at"])


async def test_listed_messages_are_what_add_message_returned(api: Api) -> None:
    thread_id = await api.create_thread()
    _, first = await api.request(
        "POST", f"/v1/threads/{thread_id}/messages", json={"content": "one"}, expect=201
    )
    _, second = await api.request(
        "POST", f"/v1/threads/{thread_id}/messages", json={"content": 'two "quoted"\n'}, expect=201
    )
    _, listed = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert listed == [first, second]


async def test_messages_are_listed_oldest_first_with_limit(api: Api) -> None:
    thread_id = await api.create_thread()
    ids = [await api.add_message(thread_id, f"message {i}") for i in range(5)]
    _, listed = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert [m["id"] for m in listed] == ids
    assert [m["content"] for m in listed] == [f"message {i}" for i in range(5)]
    _, first_two = await api.request("GET", f"/v1/threads/{thread_id}/messages?limit=2", expect=200)
    assert [m["id"] for m in first_two] == ids[:2]


async def test_messages_of_other_threads_are_not_listed(api: Api) -> None:
    a = await api.create_thread()
    b = await api.create_thread()
    await api.add_message(a, "for a")
    await api.add_message(b, "for b")
    _, listed = await api.request("GET", f"/v1/threads/{a}/messages", expect=200)
    assert [m["content"] for m in listed] == ["for a"]


async def test_assistant_messages_are_written_by_runs(api: Api) -> None:
    org_id, user_id = await admin_ids(api)
    thread_id, run_id = await api.start_run("what is up")
    await api.wait_for(run_id)
    await api.add_message(thread_id, "and again")
    second = await api.create_run(thread_id)
    await api.wait_for(second)

    _, listed = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert [(m["role"], m["content"]) for m in listed] == [
        ("user", "what is up"),
        ("assistant", "echo: what is up"),
        ("user", "and again"),
        ("assistant", "echo: and again"),
    ]
    for message in listed:
        assert set(message) == MESSAGE_KEYS | {"run_id"}
        assert message["org_id"] == org_id
        assert message["thread_id"] == thread_id
    assistant = [m for m in listed if m["role"] == "assistant"]
    assert [m["created_by_user_id"] for m in assistant] == [None, None]
    assert [m["run_id"] for m in assistant] == [run_id, second]
    assert all(m["created_by_user_id"] == user_id for m in listed if m["role"] == "user")


async def test_thread_shows_its_active_run_until_the_run_ends(api: Api) -> None:
    thread_id, run_id = await api.start_run("/slow 100\nslowly")
    _, thread = await api.request("GET", f"/v1/threads/{thread_id}", expect=200)
    assert thread["active_run_id"] == run_id
    await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)
    _, thread = await api.request("GET", f"/v1/threads/{thread_id}", expect=200)
    assert thread["active_run_id"] is None
