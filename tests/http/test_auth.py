"""Auth and tenancy over HTTP: API keys, login tokens, 401s, and another org's resources are
404 on every route."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from runs.auth import key_sha256, sign_access_token
from runs.events import UserDeleted, encode_event, org_stream
from tests.conftest import ADMIN_KEY, Api

ERROR_KEYS = {"code", "message", "details", "trace_id"}


async def status_of(api: Api, headers: dict[str, str], path: str = "/v1/threads") -> int:
    """Status of a GET with exactly these headers; a 401 must have the documented shape."""
    async with api.client.get(path, headers=headers) as r:
        if r.status == 401:
            body = await r.json()
            assert set(body) == ERROR_KEYS
            assert body["code"] == "auth.unauthorized"
            assert body["trace_id"] == r.headers["X-Trace-Id"]
            assert ADMIN_KEY not in await r.text()
        return r.status


async def admin_ids(api: Api) -> tuple[str, str]:
    key = await api.runtime.queries.api_key_by_hash(key_sha256(ADMIN_KEY))
    assert key is not None
    return key["org_id"], key["user_id"]


async def login(api: Api, login: str, password: str) -> tuple[int, Any]:
    async with api.client.post("/v1/auth/login", json={"login": login, "password": password}) as r:
        return r.status, await r.json()


async def test_the_bootstrap_key_works(api: Api) -> None:
    assert await status_of(api, api.headers()) == 200
    assert await status_of(api, {"Authorization": f"bearer {ADMIN_KEY}"}) == 200


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {ADMIN_KEY}",
        f"Token {ADMIN_KEY}",
        ADMIN_KEY,
        f"Bearer {ADMIN_KEY} extra",
        f"Bearer {ADMIN_KEY}x",
        f"Bearer {ADMIN_KEY[:-1]}",
        "Bearer rl_unknown_key_0123456789abcdefghijklmnopq",
        "Bearer rlt_garbage.garbage",
    ],
)
async def test_missing_malformed_or_unknown_credentials_are_401(
    api: Api, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    for path in ["/v1/threads", "/v1/runs", f"/v1/runs/{uuid.uuid4()}", "/v1/nope"]:
        assert await status_of(api, headers, path) == 401


async def test_health_and_login_need_no_credentials(api: Api) -> None:
    for path in ["/healthz", "/readyz"]:
        async with api.client.get(path) as r:
            assert r.status == 200
    status, _ = await login(api, "admin", "wrong")
    assert status == 401  # a credential check, not a missing-header 401


async def test_revoked_key_is_401_and_other_keys_still_work(api: Api) -> None:
    accounts = api.runtime.accounts
    _, user_id = await admin_ids(api)
    key_id, key = await accounts.create_key(user_id)
    assert await status_of(api, api.headers(key)) == 200
    assert await accounts.revoke_key(key_id) is True
    assert await status_of(api, api.headers(key)) == 401
    assert await accounts.revoke_key(key_id) is False
    assert await status_of(api, api.headers(ADMIN_KEY)) == 200


async def test_keys_and_tokens_of_a_deleted_user_are_401(api: Api) -> None:
    accounts = api.runtime.accounts
    org_id, _ = await admin_ids(api)
    user_id = await accounts.create_user(org_id, "carol", "carol@example.com", "pw-carol")
    _, key = await accounts.create_key(user_id)
    status, token = await login(api, "carol", "pw-carol")
    assert status == 200
    access = {"Authorization": f"Bearer {token['access_token']}"}
    assert await status_of(api, api.headers(key)) == 200
    assert await status_of(api, access) == 200
    await api.runtime.store.append(org_stream(org_id), [encode_event(UserDeleted(user_id=user_id))])
    assert await status_of(api, api.headers(key)) == 401
    assert await status_of(api, access) == 401
    status, _ = await login(api, "carol", "pw-carol")
    assert status == 401


async def test_login_with_name_or_email(api: Api) -> None:
    accounts = api.runtime.accounts
    org_id, _ = await admin_ids(api)
    user_id = await accounts.create_user(org_id, "alice", "alice@example.com", "s3cret pass")
    for name in ["alice", "alice@example.com"]:
        status, body = await login(api, name, "s3cret pass")
        assert status == 200, body
        assert set(body) == {"access_token", "token_type", "expires_in"}
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == api.runtime.config.access_token_ttl_seconds == 3600
        token = body["access_token"]
        assert "s3cret" not in token
        headers = {"Authorization": f"Bearer {token}"}
        async with api.client.post("/v1/threads", json={}, headers=headers) as r:
            assert r.status == 201
            thread = await r.json()
        assert thread["created_by_user_id"] == user_id
        assert thread["org_id"] == org_id
    # The password is stored only as an scrypt hash.
    user = await api.runtime.queries.user(user_id)
    assert user is not None
    assert user["password_hash"].startswith("scrypt$")
    assert "s3cret" not in user["password_hash"]


async def test_login_failures_are_401(api: Api) -> None:
    accounts = api.runtime.accounts
    org_id, _ = await admin_ids(api)
    await accounts.create_user(org_id, "dave", "dave@example.com", "right")
    for name, password in [
        ("dave", "wrong"),
        ("dave@example.com", "Right"),
        ("nobody", "right"),
        ("admin", "anything"),  # a user without a password cannot log in
    ]:
        status, body = await login(api, name, password)
        assert status == 401, (name, body)
        assert body["code"] == "auth.unauthorized"
        assert set(body) == ERROR_KEYS


async def test_expired_and_tampered_access_tokens_are_401(api: Api) -> None:
    org_id, user_id = await admin_ids(api)
    secret = api.runtime.secret
    fresh = sign_access_token(secret, user_id, org_id, 60)
    assert await status_of(api, {"Authorization": f"Bearer {fresh}"}) == 200

    expired = sign_access_token(secret, user_id, org_id, 60, now=time.time() - 3600)
    assert await status_of(api, {"Authorization": f"Bearer {expired}"}) == 401

    body, _, mac = fresh.partition(".")
    flipped_body = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    flipped_mac = mac[:3] + ("A" if mac[3] != "A" else "B") + mac[4:]
    other_secret = sign_access_token(b"another secret", user_id, org_id, 60)
    for token in [
        f"{flipped_body}.{mac}",
        f"{body}.{flipped_mac}",
        f"{body}.",
        body,
        other_secret,
        fresh + "x",
    ]:
        assert await status_of(api, {"Authorization": f"Bearer {token}"}) == 401, token


async def test_access_token_of_another_org_claim_cannot_be_forged(api: Api) -> None:
    """Swapping the claims of a real token (to another org) breaks the signature."""
    other_key = await api.new_org_key()
    other = await api.runtime.queries.api_key_by_hash(key_sha256(other_key))
    assert other is not None
    org_id, user_id = await admin_ids(api)
    mine = sign_access_token(api.runtime.secret, user_id, org_id, 60)
    forged_claims = sign_access_token(b"x", user_id, other["org_id"], 60).partition(".")[0]
    forged = f"{forged_claims}.{mine.partition('.')[2]}"
    assert await status_of(api, {"Authorization": f"Bearer {forged}"}) == 401


# -- tenancy ----------------------------------------------------------------------------------


async def test_another_orgs_resources_are_404_on_every_route(api: Api) -> None:
    other = await api.new_org_key()
    thread_id, done = await api.start_run("finished")
    await api.wait_for(done)
    await api.add_message(thread_id, "/ask what now?")
    waiting = await api.create_run(thread_id)
    await api.wait_for(waiting, {"waiting_for_input"})
    store = api.runtime.store
    head = await store.head()

    missing_thread, missing_run = str(uuid.uuid4()), str(uuid.uuid4())
    routes: list[tuple[str, str, Any]] = [
        ("GET", "/v1/threads/{t}", None),
        ("GET", "/v1/threads/{t}/messages", None),
        ("POST", "/v1/threads/{t}/messages", {"content": "intruder"}),
        ("GET", "/v1/threads/{t}/runs", None),
        ("POST", "/v1/threads/{t}/runs", {}),
        ("GET", "/v1/runs/{r}", None),
        ("GET", "/v1/runs/{d}", None),
        ("POST", "/v1/runs/{r}:cancel", None),
        ("POST", "/v1/runs/{d}:cancel", None),
        ("POST", "/v1/runs/{r}/input", {"content": "intruder"}),
        ("GET", "/v1/runs/{r}/events", None),
        ("GET", "/v1/runs/{d}/events?follow=0", None),
    ]
    for method, template, payload in routes:
        path = template.format(t=thread_id, r=waiting, d=done)
        status, body = await api.request(method, path, json=payload, key=other)
        assert status == 404, (method, path, body)
        assert set(body) == ERROR_KEYS
        assert body["code"] == "not_found"
        # Exactly what a resource that does not exist at all gives: no hint that it exists.
        nowhere = template.format(t=missing_thread, r=missing_run, d=missing_run)
        _, absent = await api.request(method, nowhere, json=payload, key=other)
        assert (body["code"], body["message"], body["details"]) == (
            absent["code"],
            absent["message"],
            absent["details"],
        ), (method, path)
    # Nothing was written, and the owner sees everything unchanged.
    assert await store.head() == head
    _, run = await api.request("GET", f"/v1/runs/{waiting}", expect=200)
    assert run["status"] == "waiting_for_input"
    _, messages = await api.request("GET", f"/v1/threads/{thread_id}/messages", expect=200)
    assert "intruder" not in [m["content"] for m in messages]

    # Lists are per org, both ways.
    _, theirs = await api.request("GET", "/v1/threads", key=other, expect=200)
    assert theirs == []
    _, their_runs = await api.request("GET", "/v1/runs", key=other, expect=200)
    assert their_runs == []
    own_thread = await api.create_thread("theirs", key=other)
    _, mine = await api.request("GET", "/v1/threads", expect=200)
    assert own_thread not in [t["id"] for t in mine]
    status, _ = await api.request("GET", f"/v1/threads/{own_thread}")
    assert status == 404
    await api.request("POST", f"/v1/runs/{waiting}:cancel", expect=200)
