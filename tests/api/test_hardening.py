"""Bad input, bad credentials, throttling, secrets and slow clients.

Each test drives the real app: in process over a real socket (``aiohttp_client``), or as a
subprocess (``python -m runs``) for the connection-level timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import requests
import schemathesis
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient

import server
from runs.auth import sign_access_token
from runs.events import UserDeleted, encode_event, org_stream
from runs.openapi import document
from runs.ratelimit import FailureLimiter
from tests.conftest import ADMIN_KEY, Api, spy_on

ROOT = Path(__file__).parent.parent.parent
ID = "01a222e7-34a2-725d-b216-511d14940c97"  # well-formed, exists nowhere


def error_of(status: int, body: Any, headers: Any, expected_status: int, code: str) -> None:
    assert status == expected_status, (status, body)
    assert body["code"] == code, body
    assert body["trace_id"] == headers["X-Trace-Id"]
    assert set(body) == {"code", "message", "details", "trace_id"}


async def call(
    api: Api, method: str, path: str, *, data: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    """A request with raw bytes; returns (status, decoded JSON body, headers)."""
    sent = {**api.headers(), "Content-Type": "application/json", **(headers or {})}
    async with api.client.request(method, path, data=data, headers=sent) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json(), response.headers


# -- raw HTTP over a socket -------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


@contextlib.asynccontextmanager
async def connection(
    host: str, port: int
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def address(api: Api) -> tuple[str, int]:
    server_ = api.client.server
    return str(server_.host), int(server_.port or 0)


# -- body size, content type, malformed JSON ---------------------------------------------------


async def test_declared_body_over_the_limit_is_refused_without_reading_it(api: Api) -> None:
    host, port = address(api)
    async with connection(host, port) as (reader, writer):
        # 100 MiB announced, not one byte sent: a server that reads first would wait forever.
        writer.write(
            b"POST /v1/threads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n"
            b"Content-Length: 104857600\r\n\r\n"
        )
        await writer.drain()
        status, headers, body = await asyncio.wait_for(read_response(reader), 5)
    assert status == 413
    error = msgspec.json.decode(body)
    assert error["code"] == "validation.body_too_large"
    assert error["details"] == {"max_bytes": 1024 * 1024}
    assert error["trace_id"] == headers["x-trace-id"]


async def test_chunked_body_is_cut_off_at_the_limit_not_buffered_whole(
    aiohttp_client: Any, make_app: Callable[..., web.Application]
) -> None:
    client = await aiohttp_client(make_app(max_body_bytes=64 * 1024))
    host, port = str(client.server.host), int(client.server.port)
    async with connection(host, port) as (reader, writer):
        writer.write(
            b"POST /v1/threads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"a" * 16 * 1024
        for _ in range(6):  # 96 KiB and no terminating chunk: the body never ends
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        status, _, body = await asyncio.wait_for(read_response(reader), 5)
    assert status == 413
    assert msgspec.json.decode(body)["code"] == "validation.body_too_large"


async def test_body_limit_is_configurable_and_a_body_under_it_passes(
    aiohttp_client: Any, make_app: Callable[..., web.Application]
) -> None:
    api = Api(await aiohttp_client(make_app(max_body_bytes=4096)), ADMIN_KEY)
    thread_id = await api.create_thread()
    path = f"/v1/threads/{thread_id}/messages"
    under = msgspec.json.encode({"content": "x" * 4000})
    status, body, _ = await call(api, "POST", path, data=under)
    assert status == 201, body
    status, body, headers = await call(
        api, "POST", path, data=msgspec.json.encode({"content": "x" * 5000})
    )
    error_of(status, body, headers, 413, "validation.body_too_large")


async def test_non_json_body_is_400_and_wrong_content_type_is_415(api: Api) -> None:
    status, body, headers = await call(api, "POST", "/v1/threads", data=b"title=x")
    error_of(status, body, headers, 400, "validation.json")
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        status, body, headers = await call(
            api,
            "POST",
            "/v1/threads",
            data=b'{"title": "x"}',
            headers={"Content-Type": content_type},
        )
        error_of(status, body, headers, 415, "validation.content_type")


DEEP = 100_000


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param(
            b'{"content": ' + b"[" * DEEP + b"]" * DEEP + b"}", "content", id="deep-array"
        ),
        pytest.param(
            b'{"content": ' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
            "content",
            id="deep-object",
        ),
        pytest.param(b'{"content": ' + b"9" * 5000 + b"}", "content", id="huge-int"),
        pytest.param(b'{"content": 1e99999}', "content", id="huge-float"),
        pytest.param(b'{"content": NaN}', "content", id="nan"),
        pytest.param(b'{"content": -Infinity}', "content", id="infinity"),
        pytest.param(b'{"content": "ok \xff\xfe bad"}', "content", id="invalid-utf8"),
        pytest.param(b'{"content": "\xc3"}', "content", id="truncated-utf8"),
        pytest.param(b'{"content": "a\\u0000b"}', "content", id="escaped-nul"),
        pytest.param(b'{"content": "a\x00b"}', "content", id="raw-nul"),
        pytest.param(b'{"content": "\\ud800"}', "content", id="lone-surrogate"),
        pytest.param(b'{"content": ""}', "content", id="empty"),
        pytest.param(b'{"content": "' + b"x" * 300_000 + b'"}', "content", id="too-long"),
        pytest.param(b'{"content": "x", "extra": 1}', "extra", id="unknown-field"),
        pytest.param(b"{}", "content", id="missing"),
    ],
)
async def test_malformed_message_bodies_are_400_naming_the_field(
    api: Api, raw: bytes, field: str
) -> None:
    thread_id = await api.create_thread()
    status, body, headers = await call(api, "POST", f"/v1/threads/{thread_id}/messages", data=raw)
    # A field the client invented never becomes part of an error code.
    code = "validation.unknown_field" if field == "extra" else f"validation.{field}"
    error_of(status, body, headers, 400, code)
    assert body["details"]["field"] == field


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/v1/threads", b'{"title": "' + b"t" * 501 + b'"}', "title"),
        ("/v1/threads", b'{"title": "\xff"}', "title"),
        ("/v1/threads", b'{"title": "a\\u0000"}', "title"),
        ("/v1/auth/login", b'{"login": "a\\u0000", "password": "p"}', "login"),
        ("/v1/auth/login", b'{"login": "a", "password": "' + b"p" * 2000 + b'"}', "password"),
        ("/v1/auth/login", b'{"login": 1e400, "password": "p"}', "login"),
        ("/v1/threads/{thread}/runs", b'{"route_id": "' + b"r" * 10_000 + b'"}', "route_id"),
        ("/v1/threads/{thread}/runs", b'{"persona_id": "' + b"p" * 10_000 + b'"}', "persona_id"),
        ("/v1/threads/{thread}/runs", b'{"persona_id": NaN}', "persona_id"),
        ("/v1/runs/{run}/input", b'{"content": "\xff"}', "content"),
        ("/v1/runs/{run}/input", b'{"content": "   "}', "content"),
        ("/v1/runs/{run}/input", b'{"content": "\\u0000"}', "content"),
    ],
)
async def test_bad_fields_of_every_body_are_400_naming_the_field(
    api: Api, path: str, raw: bytes, field: str
) -> None:
    thread_id, run_id = await api.start_run("/ask Really?")
    await api.wait_for(run_id, {"waiting_for_input"})
    path = path.format(thread=thread_id, run=run_id)
    status, body, headers = await call(api, "POST", path, data=raw)
    error_of(status, body, headers, 400, f"validation.{field}")
    assert body["details"]["field"] == field


async def test_input_over_32_kb_is_413_content_too_large(api: Api) -> None:
    _, run_id = await api.start_run("/ask Really?")
    await api.wait_for(run_id, {"waiting_for_input"})
    raw = msgspec.json.encode({"content": "é" * 16_385})  # 32,770 bytes of UTF-8
    status, body, headers = await call(api, "POST", f"/v1/runs/{run_id}/input", data=raw)
    error_of(status, body, headers, 413, "validation.content_too_large")
    assert body["details"] == {"field": "content", "max_bytes": 32 * 1024}


# -- path ids and query parameters -------------------------------------------------------------

BAD_IDS = [
    "x",
    "a..b",
    ID.upper(),
    ID + " ",
    ID[:-1],
    "%00",
    "%FF%FE",
    "ünïcødé",
    "x" * 7000,
    "1e400",
]
ID_ROUTES = [
    ("GET", "/v1/threads/{}"),
    ("GET", "/v1/threads/{}/messages"),
    ("POST", "/v1/threads/{}/messages"),
    ("GET", "/v1/threads/{}/runs"),
    ("POST", "/v1/threads/{}/runs"),
    ("GET", "/v1/runs/{}"),
    ("POST", "/v1/runs/{}:cancel"),
    ("POST", "/v1/runs/{}/input"),
    ("GET", "/v1/runs/{}/events"),
]


@pytest.mark.parametrize(("method", "template"), ID_ROUTES)
async def test_malformed_or_unknown_path_ids_are_404(api: Api, method: str, template: str) -> None:
    body_raw = None
    if method == "POST":
        body_raw = b"{}" if template.endswith("/runs") else b'{"content": "x"}'
    for bad in [*BAD_IDS, ID]:
        async with api.client.request(
            method,
            template.format(bad),
            data=body_raw,
            headers={**api.headers(), "Content-Type": "application/json"},
        ) as response:
            body = await response.json()
            assert response.status == 404, (bad, body)
            assert body["code"] == "not_found"
            assert body["message"] in {"thread not found", "run not found"}, (bad, body)
            assert body["trace_id"] == response.headers["X-Trace-Id"]


async def test_request_line_over_8_kb_is_refused_by_the_http_parser(api: Api) -> None:
    """Past aiohttp's 8,190-byte request line, its parser answers 400 itself (plain text,
    before any handler runs): still a 400 and never a 500."""
    async with api.client.get("/v1/threads/" + "x" * 9000, headers=api.headers()) as response:
        assert response.status == 400


QUERY_CASES = [
    *[
        ("/v1/threads?limit=" + v, "limit")
        for v in ("0", "201", "-1", "abc", "1.5", "", "\uff11", "9" * 5000)
    ],
    *[("/v1/runs?limit=" + v, "limit") for v in ("0", "%00", "1e2")],
    *[("/v1/threads/{thread}/messages?limit=" + v, "limit") for v in ("0", "x")],
    *[("/v1/threads/{thread}/runs?limit=" + v, "limit") for v in ("300", "x")],
    *[("/v1/threads?before=" + v, "before") for v in ("x", ID.upper(), "", "%00", "b" * 5000)],
    *[("/v1/runs?before=" + v, "before") for v in ("x", ID + "0")],
    *[("/v1/runs?status=" + v, "status") for v in ("RUNNING", "", "done", "%FF", "s" * 5000)],
    *[
        ("/v1/runs/{run}/events?after_seq=" + v, "after_seq")
        for v in ("-1", "x", "1e3", "9" * 16, "%00")
    ],
    *[("/v1/runs/{run}/events?follow=" + v, "follow") for v in ("yes", "2", "")],
    *[("/v1/runs/{run}?as_of_seq=" + v, "as_of_seq") for v in ("0", "-1", "x", "999", "9" * 5000)],
]


@pytest.mark.parametrize(("path", "field"), QUERY_CASES)
async def test_malformed_or_out_of_range_query_parameters_are_400(
    api: Api, path: str, field: str
) -> None:
    thread_id, run_id = await api.start_run("hello")
    await api.wait_for(run_id)
    status, body, headers = await call(api, "GET", path.format(thread=thread_id, run=run_id))
    error_of(status, body, headers, 400, f"validation.{field}")
    assert body["details"]["field"] == field


async def test_malformed_last_event_id_is_400(api: Api) -> None:
    _, run_id = await api.start_run("hello")
    await api.wait_for(run_id)
    status, body, headers = await call(
        api, "GET", f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "x"}
    )
    error_of(status, body, headers, 400, "validation.after_seq")


# -- auth --------------------------------------------------------------------------------------


async def _raw_get(api: Api, authorization: bytes) -> tuple[int, dict[str, Any]]:
    """GET /v1/threads with the Authorization header as raw bytes (UTF-8 and all)."""
    host, port = address(api)
    async with connection(host, port) as (reader, writer):
        writer.write(
            b"GET /v1/threads HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: " + authorization + b"\r\n\r\n"
        )
        await writer.drain()
        status, _, body = await asyncio.wait_for(read_response(reader), 5)
    return status, msgspec.json.decode(body)


@pytest.mark.parametrize(
    "authorization",
    [
        b"",
        b"Basic " + ADMIN_KEY.encode(),
        b"Token " + ADMIN_KEY.encode(),
        b"Bearer",
        b"Bearer ",
        b"Bearer    ",
        ADMIN_KEY.encode(),
        b"Bearer " + ADMIN_KEY.encode() + b" extra",
        b"Bearer " + ADMIN_KEY[:10].encode() + b" " + ADMIN_KEY[10:].encode(),
        b"Bearer\t" + ADMIN_KEY.encode(),
        b"Bearer " + ADMIN_KEY.encode() + "é".encode(),
        b"Bearer " + "ключ".encode(),
        b"Bearer " + ADMIN_KEY.encode()[:-1],
        b"Bearer rlt_x.y",
        b"Bearer rlt_" + b"A" * 5000,
    ],
)
async def test_malformed_or_wrong_credentials_are_401(api: Api, authorization: bytes) -> None:
    status, body = await _raw_get(api, authorization)
    assert status == 401, body
    assert body["code"] == "auth.unauthorized"


async def _user_with_key(api: Api, name: str) -> tuple[str, str, str, str]:
    """(org_id, user_id, key_id, key) of a fresh user."""
    accounts = api.runtime.accounts
    org_id = await accounts.create_org(f"org-{name}")
    user_id = await accounts.create_user(org_id, name, f"{name}@example.com")
    key_id, key = await accounts.create_key(user_id)
    return org_id, user_id, key_id, key


async def test_revoked_key_is_401(api: Api) -> None:
    _, _, key_id, key = await _user_with_key(api, "rita")
    await api.request("GET", "/v1/threads", key=key, expect=200)
    assert await api.runtime.accounts.revoke_key(key_id)
    status, body = await api.request("GET", "/v1/threads", key=key)
    assert (status, body["code"]) == (401, "auth.unauthorized")


async def test_expired_or_forged_access_token_is_401(api: Api) -> None:
    org_id, user_id, _, _ = await _user_with_key(api, "erin")
    secret = api.runtime.secret
    fresh = sign_access_token(secret, user_id, org_id, 60)
    await api.request("GET", "/v1/threads", key=fresh, expect=200)
    expired = sign_access_token(secret, user_id, org_id, 60, now=time.time() - 120)
    forged = sign_access_token(b"another secret", user_id, org_id, 60)
    tampered = fresh[:-2] + ("AA" if not fresh.endswith("AA") else "BB")
    for token in (expired, forged, tampered):
        status, body = await api.request("GET", "/v1/threads", key=token)
        assert (status, body["code"]) == (401, "auth.unauthorized"), token


async def test_tokens_of_a_deleted_user_are_401(api: Api) -> None:
    org_id, user_id, _, key = await _user_with_key(api, "dave")
    token = sign_access_token(api.runtime.secret, user_id, org_id, 600)
    for credential in (key, token):
        await api.request("GET", "/v1/threads", key=credential, expect=200)
    await api.runtime.store.append(org_stream(org_id), [encode_event(UserDeleted(user_id=user_id))])
    for credential in (key, token):
        status, body = await api.request("GET", "/v1/threads", key=credential)
        assert (status, body["code"]) == (401, "auth.unauthorized")


async def test_every_api_key_path_hashes_once(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Malformed, unknown, revoked and valid keys all cost one sha256 (no early exit that
    would make a bad key measurably cheaper than a good one)."""
    _, _, key_id, revoked = await _user_with_key(api, "hana")
    await api.runtime.accounts.revoke_key(key_id)
    calls: list[str] = spy_on(monkeypatch, server, "key_sha256")
    for authorization, expected in [
        (b"Basic abc", 401),
        (b"Bearer ", 401),
        (b"Bearer rl_unknown_key_0123456789", 401),
        (b"Bearer " + revoked.encode(), 401),
        (b"Bearer " + ADMIN_KEY.encode(), 200),
    ]:
        calls.clear()
        status, _ = await _raw_get(api, authorization)
        assert status == expected, authorization
        assert len(calls) == 1, (authorization, calls)


# -- login throttling --------------------------------------------------------------------------


def test_failure_limiter_delays_grow_and_a_success_clears_only_its_key() -> None:
    now = [1000.0]
    limiter = FailureLimiter(3, 60, base_delay_seconds=2, clock=lambda: now[0])
    keys = ("user:a", "address:1")
    for _ in range(3):
        assert limiter.retry_after(keys) == 0  # the first failures cost nothing
        limiter.failed(keys)
    assert limiter.retry_after(keys) == pytest.approx(2)
    assert limiter.retry_after(("user:b", "address:2")) == 0
    now[0] += 2
    assert limiter.retry_after(keys) == 0
    limiter.failed(keys)
    assert limiter.retry_after(keys) == pytest.approx(4)  # doubles with each failure
    for _ in range(10):
        limiter.failed(keys)
    assert limiter.retry_after(keys) == pytest.approx(60)  # at most the window
    limiter.succeeded("user:a")
    assert limiter.retry_after(["user:a"]) == 0
    assert limiter.retry_after(["address:1"]) > 0  # the address keeps its failures
    now[0] += 61  # every failure has left the window
    assert limiter.retry_after(keys) == 0


def test_failure_limiter_memory_is_bounded() -> None:
    limiter = FailureLimiter(3, 60, max_keys=100)
    for i in range(1000):
        limiter.failed([f"address:{i}"])
    assert len(limiter._failures) == 100


@contextlib.asynccontextmanager
async def from_address(client: TestClient, ip: str) -> AsyncIterator[Callable[..., Any]]:
    """Log in from another loopback address (127.0.0.0/8 all reaches 127.0.0.1)."""
    connector = aiohttp.TCPConnector(local_addr=(ip, 0))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def login(name: str, password: str) -> tuple[int, Any]:
            async with session.post(
                client.make_url("/v1/auth/login"), json={"login": name, "password": password}
            ) as response:
                return response.status, await response.json()

        yield login


@pytest.fixture
async def login_client(aiohttp_client: Any, make_app: Callable[..., web.Application]) -> TestClient:
    client = await aiohttp_client(make_app(login_max_failures=3, login_window_seconds=300))
    runtime = client.app[server.RUNTIME]
    org_id = await runtime.accounts.create_org("acme")
    for name in ("alice", "bob", "carol"):
        await runtime.accounts.create_user(org_id, name, f"{name}@example.com", f"{name}-pw")
    return client  # type: ignore[no-any-return]


async def test_login_failures_are_limited_per_client_address(login_client: TestClient) -> None:
    async with from_address(login_client, "127.0.0.2") as login:
        for name in ("alice", "bob", "nobody"):
            assert (await login(name, "wrong"))[0] == 401
        status, body = await login("carol", "carol-pw")  # right password, blocked address
        assert status == 429
        assert body["code"] == "auth.rate_limited"
        assert body["details"]["retry_after_seconds"] > 0
    async with from_address(login_client, "127.0.0.3") as login:
        assert (await login("carol", "carol-pw"))[0] == 200  # another address is not blocked


async def test_login_failures_are_limited_per_login(login_client: TestClient) -> None:
    for ip in ("127.0.0.4", "127.0.0.5", "127.0.0.6"):
        async with from_address(login_client, ip) as login:
            assert (await login("alice", "guess"))[0] == 401
    async with from_address(login_client, "127.0.0.7") as login:
        # A name and an email are one user: one count, not twice the guesses.
        status, body = await login("alice@example.com", "alice-pw")
        assert (status, body["code"]) == (429, "auth.rate_limited")
        assert (await login("bob", "bob-pw"))[0] == 200  # other logins from here still work


async def test_a_success_does_not_reset_another_address_counter(login_client: TestClient) -> None:
    async with from_address(login_client, "127.0.0.8") as attacker:
        for _ in range(2):
            assert (await attacker("alice", "guess"))[0] == 401
        async with from_address(login_client, "127.0.0.9") as owner:
            assert (await owner("alice", "alice-pw"))[0] == 200
        assert (await attacker("bob", "guess"))[0] == 401  # third failure from .8
        status, body = await attacker("bob", "bob-pw")
        assert (status, body["code"]) == (429, "auth.rate_limited")


async def test_concurrent_guesses_cannot_slip_past_the_limit(login_client: TestClient) -> None:
    async with from_address(login_client, "127.0.0.10") as login:
        results = await asyncio.gather(*(login("alice", f"guess-{i}") for i in range(8)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [401] * 3 + [429] * 5


async def test_concurrent_correct_logins_are_never_throttled(login_client: TestClient) -> None:
    async with from_address(login_client, "127.0.0.11") as login:
        results = await asyncio.gather(*(login("bob", "bob-pw") for _ in range(8)))
    assert [status for status, _ in results] == [200] * 8


# -- secrets -----------------------------------------------------------------------------------

ANTHROPIC_KEY = "sk-ant-SECRET123"
PASSWORD = "pw-SECRET-hunter2"
WRONG_PASSWORD = "wrong-SECRET-guess"
KEYS_SEEN = web.AppKey("keys_seen", list[str])


async def fake_anthropic(request: web.Request) -> web.StreamResponse:
    """Just enough of the streaming Messages API; 401 unless the right key is sent."""
    # The SDK sends the key as ``x-api-key`` (1.x) or as a Bearer token (2.x).
    key = request.headers.get("x-api-key") or request.headers.get("Authorization", "")[7:]
    request.app[KEYS_SEEN].append(key)
    if key != ANTHROPIC_KEY:
        return web.json_response(
            {"type": "error", "error": {"type": "authentication_error", "message": "bad key"}},
            status=401,
        )
    events = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-test",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 10, "output_tokens": 1},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "hi there"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 3},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for name, data in events:
        await response.write(
            f"event: {name}\ndata: {msgspec.json.encode(data).decode()}\n\n".encode()
        )
    await response.write_eof()
    return response


async def test_no_secret_reaches_the_log_the_logs_or_an_error(
    aiohttp_client: Any, make_app: Callable[..., web.Application], db_path: str
) -> None:
    fake = web.Application()
    fake[KEYS_SEEN] = []
    fake.router.add_post("/v1/messages", fake_anthropic)
    fake_client = await aiohttp_client(fake)
    base_url = str(fake_client.make_url("")).rstrip("/")
    routes = [
        {
            "id": "claude",
            "provider": "anthropic",
            "model": "claude-test",
            "base_url": base_url,
            "api_key_env": "TEST_ANTHROPIC_KEY",
            "max_attempts": 1,
        },
        {
            "id": "claude-bad",
            "provider": "anthropic",
            "model": "claude-test",
            "base_url": base_url,
            "api_key_env": "TEST_WRONG_KEY",
            "max_attempts": 1,
        },
    ]
    env = {"TEST_ANTHROPIC_KEY": ANTHROPIC_KEY, "TEST_WRONG_KEY": ANTHROPIC_KEY + "-old"}
    errors: list[str] = []
    with structlog.testing.capture_logs() as logs:
        client = await aiohttp_client(make_app(env=env, routes=routes))
        api = Api(client, ADMIN_KEY)
        accounts = api.runtime.accounts
        org_id = await accounts.create_org("secretive")
        user_id = await accounts.create_user(org_id, "sam", "sam@example.com", PASSWORD)
        _, api_key = await accounts.create_key(user_id)

        async def record(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
            async with client.request(method, path, **kwargs) as response:
                text = await response.text()
                if response.status >= 400:
                    errors.append(text + repr(dict(response.headers)))
                is_json = response.content_type == "application/json"
                return response.status, msgspec.json.decode(text) if is_json else text

        status, _ = await record(
            "POST", "/v1/auth/login", json={"login": "sam", "password": WRONG_PASSWORD}
        )
        assert status == 401
        status, result = await record(
            "POST", "/v1/auth/login", json={"login": "sam", "password": PASSWORD}
        )
        assert status == 200
        token = result["access_token"]
        by_token = {"Authorization": f"Bearer {token}"}
        by_key = {"Authorization": f"Bearer {api_key}"}
        status, thread = await record("POST", "/v1/threads", json={"title": "s"}, headers=by_token)
        assert status == 201
        await record(
            "POST", f"/v1/threads/{thread['id']}/messages", json={"content": "hi"}, headers=by_key
        )
        status, created = await record(
            "POST", f"/v1/threads/{thread['id']}/runs", json={"route_id": "claude"}, headers=by_key
        )
        assert status == 201
        run = await Api(client, api_key).wait_for(created["run_id"])
        assert run["status"] == "completed", (run, fake[KEYS_SEEN])
        status, created = await record(
            "POST",
            f"/v1/threads/{thread['id']}/runs",
            json={"route_id": "claude-bad"},
            headers=by_token,
        )
        run = await Api(client, api_key).wait_for(created["run_id"])
        assert (run["status"], run["error_class"]) == ("failed", "provider.auth")
        await record("GET", f"/v1/runs/{created['run_id']}/events", headers=by_key)
        # Errors that carry credentials in the request.
        for bad in (api_key + "x", token + "x", api_key[:-1] + " " + PASSWORD):
            status, _ = await record(
                "GET", "/v1/threads", headers={"Authorization": f"Bearer {bad}"}
            )
            assert status == 401
        for body in (
            {"login": "sam", "password": PASSWORD, "token": token},
            {"login": "sam", "password": PASSWORD * 100},
            {"login": ANTHROPIC_KEY, "password": PASSWORD},
        ):
            await record("POST", "/v1/auth/login", json=body)
        await record(
            "POST", "/v1/threads", data=PASSWORD, headers={**by_key, "Content-Type": "text/plain"}
        )
        await record(
            "POST",
            "/v1/threads",
            data=api_key,
            headers={**by_key, "Content-Type": "application/json"},
        )
        await client.close()  # every append done, the log closed
    assert fake[KEYS_SEEN][:1] == [ANTHROPIC_KEY]  # the key really was in play
    assert len(errors) >= 9
    secrets = [api_key, PASSWORD, WRONG_PASSWORD, token, ANTHROPIC_KEY]
    files = [Path(db_path), Path(db_path + "-wal")]
    stored = b"".join(f.read_bytes() for f in files if f.exists())
    assert b"run.completed" in stored and b"hi there" in stored  # the scan reads the real log
    captured = repr(logs)
    assert "request" in captured
    for secret in secrets:
        assert secret.encode() not in stored, secret
        assert secret not in captured, secret
        for error in errors:
            assert secret not in error, (secret, error)


# -- slow clients ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def slow_server(tmp_path: Path) -> Any:
    """``runlog serve`` (``python -m runs``) with a 1 s read timeout, as a subprocess."""
    config = tmp_path / "runlog.toml"
    config.write_text("request_read_timeout_seconds = 1\n", encoding="utf-8")
    port = _free_port()
    env = {**os.environ, "RUNLOG_BOOTSTRAP_API_KEY": ADMIN_KEY, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runs",
            "--port",
            str(port),
            "--db",
            str(tmp_path / "r.db"),
            "--config",
            str(config),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    for line in process.stdout:  # returns as soon as the server says it listens
        if b"runlog listening on" in line:
            break
    else:
        raise AssertionError("server did not start")
    try:
        yield port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_slow_clients_are_cut_off_and_do_not_block_others(slow_server: int) -> None:
    port = slow_server
    started = time.monotonic()

    async def trickle_headers() -> float:
        """Headers one byte every 100 ms: cut off once the 1 s timeout passes."""
        async with connection("127.0.0.1", port) as (reader, writer):
            request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 200 + b"\r\n\r\n"
            with contextlib.suppress(ConnectionError):
                for byte in request:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    if reader.at_eof():
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(1), 0.1)
        return time.monotonic() - started

    async def silent() -> float:
        async with connection("127.0.0.1", port) as (reader, _):
            assert await asyncio.wait_for(reader.read(), 10) == b""
        return time.monotonic() - started

    async def trickle_body() -> tuple[int, bytes, float]:
        async with connection("127.0.0.1", port) as (reader, writer):
            writer.write(
                b"POST /v1/threads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + ADMIN_KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
            )
            response = asyncio.ensure_future(read_response(reader))
            with contextlib.suppress(ConnectionError):
                while not response.done():
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.wait({response}, timeout=0.1)
            status, _, body = await asyncio.wait_for(response, 10)
        return status, body, time.monotonic() - started

    async def others() -> list[float]:
        """Meanwhile, ordinary requests are answered promptly."""
        latencies = []
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as session:
            for _ in range(10):
                t0 = time.monotonic()
                async with session.post(f"http://127.0.0.1:{port}/v1/threads", json={}) as r:
                    assert r.status == 201
                async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                    assert r.status == 200
                latencies.append(time.monotonic() - t0)
                await asyncio.sleep(0.05)  # spread the calls over the slow clients' lifetime
        return latencies

    headers_cut, silent_cut, (status, body, body_cut), latencies = await asyncio.wait_for(
        asyncio.gather(trickle_headers(), silent(), trickle_body(), others()), 30
    )
    assert 0.9 < headers_cut < 5, headers_cut  # a full request would take 22 s at this pace
    assert 0.9 < silent_cut < 5, silent_cut
    assert status == 408
    assert msgspec.json.decode(body)["code"] == "validation.body_timeout"
    assert 0.9 < body_cut < 5, body_cut
    assert max(latencies) < 0.8, latencies  # a blocked server would take >= 1 s


# -- regressions found by the fuzzer (tests/api/test_fuzz.py) ----------------------------------


async def test_regression_sse_body_conforms_to_the_documented_event_schema(api: Api) -> None:
    """The document first described the SSE body as one string; schemathesis reads a
    ``text/event-stream`` schema (before OpenAPI 3.2) as the schema of each event and
    rejected every stream. Each event is now ``{id, data}`` with ``data`` JSON of SseFrame."""
    _, run_id = await api.start_run("hello")
    await api.wait_for(run_id)
    schema = schemathesis.openapi.from_dict(document())
    operation = schema["/v1/runs/{run_id}/events"]["GET"]
    async with api.client.get(f"/v1/runs/{run_id}/events", headers=api.headers()) as response:
        received = schemathesis.Response(
            status_code=response.status,
            headers={k: response.headers.getall(k) for k in response.headers},
            content=await response.read(),
            request=requests.Request("GET", str(response.url)).prepare(),
            elapsed=0.0,
            verify=True,
        )
    assert received.content.count(b"data: ") >= 3
    operation.validate_response(received)
    broken = copy.deepcopy(document())
    sse = broken["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]
    sse["text/event-stream"]["schema"] = {"type": "string"}  # the document as it was
    with pytest.raises(AssertionError):
        schemathesis.openapi.from_dict(broken)["/v1/runs/{run_id}/events"]["GET"].validate_response(
            received
        )
