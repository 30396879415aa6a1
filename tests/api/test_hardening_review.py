"""Findings of an adversarial review, each through the real app on a real socket: duplicated
credentials, non-canonical tokens, ``Expect: 100-continue`` over the limit, numbers the store
cannot hold, and the log files' modes."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from runs.auth import ACCESS_TOKEN_PREFIX
from tests.conftest import ADMIN_KEY, Api

_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


async def test_two_authorization_headers_are_refused(api: Api) -> None:
    headers = [("Authorization", f"Bearer {ADMIN_KEY}"), ("Authorization", "Bearer rl_other")]
    async with api.client.get("/v1/threads", headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["code"] == "auth.unauthorized"
    reversed_ = [("Authorization", "Bearer rl_other"), ("Authorization", f"Bearer {ADMIN_KEY}")]
    async with api.client.get("/v1/threads", headers=reversed_) as response:
        assert response.status == 401
    async with api.client.get("/v1/threads", headers=headers[:1]) as response:
        assert response.status == 200


async def _token(api: Api) -> str:
    accounts = api.runtime.accounts
    org = await api.runtime.queries.org_count()
    assert org == 1
    keys = await accounts.queries.api_keys()
    user = await accounts.create_user(keys[0]["org_id"], "erin", "erin@example.com", "pw-erin-1")
    assert user
    _, body = await api.request(
        "POST", "/v1/auth/login", json={"login": "erin", "password": "pw-erin-1"}, expect=200
    )
    return str(body["access_token"])


async def test_only_the_canonical_spelling_of_a_token_is_accepted(api: Api) -> None:
    token = await _token(api)
    await api.request("GET", "/v1/threads", key=token, expect=200)
    body, _, mac = token[len(ACCESS_TOKEN_PREFIX) :].partition(".")
    assert len(mac) == 43  # 32 bytes: the last character carries 2 bits and 4 zero bits
    index = _B64URL.index(mac[-1])
    same_bits = _B64URL[index ^ 1]  # differs only in a bit the decoder drops
    variants = [
        f"{ACCESS_TOKEN_PREFIX}{body}.{mac}=",
        f"{ACCESS_TOKEN_PREFIX}{body}.{mac[:-1]}{same_bits}",
        f"{ACCESS_TOKEN_PREFIX}{body}=.{mac}",
        f"{ACCESS_TOKEN_PREFIX}{body}.{mac[:10]}!{mac[10:]}",
    ]
    for variant in variants:
        status, error = await api.request("GET", "/v1/threads", key=variant)
        assert status == 401, (variant, error)


async def test_expect_continue_over_the_limit_gets_413_at_once(api: Api) -> None:
    server = api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        too_big = api.runtime.config.max_body_bytes + 1
        writer.write(
            (
                "POST /v1/threads HTTP/1.1\r\n"
                f"Host: {server.host}\r\n"
                f"Authorization: Bearer {ADMIN_KEY}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {too_big}\r\n"
                "Expect: 100-continue\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        async with asyncio.timeout(5):
            status_line = await reader.readline()
            head = await reader.readuntil(b"\r\n\r\n")
        assert status_line.split()[1] == b"413", status_line
        assert b"x-trace-id" in head.lower()
    finally:
        writer.close()

    # Within the limit the client is told to go on, and the request succeeds.
    async with api.client.post(
        "/v1/threads",
        json={"title": "ok"},
        headers={**api.headers(), "Expect": "100-continue"},
        expect100=True,
    ) as response:
        assert response.status == 201


async def test_a_usage_larger_than_the_store_holds_is_clamped(api: Api) -> None:
    _, run_id = await api.start_run(f"/cache {2**63}\nhello")
    run = await api.wait_for(run_id)
    assert run["status"] == "completed", run
    _, listed = await api.request("GET", "/v1/runs", expect=200)
    row = next(r for r in listed if r["run_id"] == run_id)
    assert row["cache_hit_rate"] is not None
    assert 0.99 < row["cache_hit_rate"] <= 1.0


async def test_the_log_files_are_readable_by_their_owner_only(api: Api, db_path: str) -> None:
    await api.create_thread()
    for suffix in ("", "-wal", "-shm"):
        path = Path(db_path + suffix)
        assert path.exists(), path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, (path, oct(os.stat(path).st_mode))
