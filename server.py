"""runlog's HTTP service: the aiohttp application (see docs/architecture.md, "HTTP").

One route table; middleware for the trace id, auth and errors. Only this module turns errors
into HTTP responses. The command line (``runs.cli``, the ``runlog`` entry point) imports this
module to serve; this module never imports the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import math
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec
import structlog
from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler

from eventstore import (
    Coordination,
    EventStore,
    EventStoreError,
    StorageUnavailable,
    StoreClosedError,
    is_postgres_url,
    open_coordination,
    open_event_store,
    process_id,
    startup_lock,
)
from projections import all_projections
from projections.queries import Queries
from runs import logs, metrics
from runs.anchors import CheckpointPublisher, load_private_key
from runs.auth import (
    DUMMY_PASSWORD_HASH,
    key_sha256,
    sign_access_token,
    verify_access_token,
    verify_password,
)
from runs.config import Config, Route
from runs.console import console_asset, console_index
from runs.credentials import KeyCache, StreamGuards
from runs.errors import (
    NotFound,
    RateLimited,
    RunsError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    status_of,
)
from runs.events import run_stream
from runs.http_input import path_id, query_before, query_limit, query_seq, read_body
from runs.ids import is_id
from runs.mcp_servers import McpServers
from runs.personas import PersonaRegistry
from runs.providers.base import Provider
from runs.providers.scripted import ScriptedProvider
from runs.ratelimit import FailureLimiter, LoginThrottle, SharedFailureLimiter
from runs.routes import RouteTable
from runs.run import RUN_STATUSES, TERMINAL_STATUSES, cancel_receipt, fold_recorded
from runs.schemas import (
    MAX_INPUT_BYTES,
    CancelReceipt,
    CreateMessage,
    CreateRun,
    CreateThread,
    Error,
    Login,
    LoginResult,
    Message,
    Ok,
    Run,
    RunCreated,
    RunDetail,
    SubmitInput,
    Thread,
    ThreadRun,
    ToolCallsReceipt,
    ToolInfo,
    UsageReport,
    UsageRow,
)
from runs.service import Accounts, Principal, RunService
from runs.sse import stream_events
from runs.startup import bootstrap, load_secret, record_personas
from runs.supervisor import Supervisor
from runs.tools import Tool, ToolRegistry, load_tool_modules, persona_allows
from runs.usage import usage_query
from runs.webhooks.handlers import WebhookHandlers
from runs.webhooks.sender import Retry
from runs.webhooks.service import WebhookService
from runs.webhooks.worker import DeliveryWorker

__all__ = ["RUNTIME", "Runtime", "create_app"]

log = structlog.get_logger("runlog.http")

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TRACE_ID_FORMAT = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v1/auth/login", "/openapi.json"})


class Runtime:
    """Everything a request handler needs, built at start-up and closed at shutdown."""

    def __init__(
        self,
        config: Config,
        env: Mapping[str, str],
        tools: Sequence[Tool],
        provider_for: Callable[[Route], Provider] | None,
    ) -> None:
        self.config = config
        self.env = env
        self.routes = RouteTable(config, env)
        self.personas = PersonaRegistry.from_dirs(config.personas_dir)
        self.mcp_servers = McpServers(config.mcp_servers, env)
        self.tools = ToolRegistry(
            [*tools, *load_tool_modules(config.tool_modules)], self.mcp_servers
        )
        self._providers: dict[str, Provider] = {}
        self.provider_for = provider_for or self.default_provider
        self.store: EventStore
        self.queries: Queries
        self.accounts: Accounts
        self.supervisor: Supervisor
        self.service: RunService
        self.webhooks: WebhookService
        self.deliveries: DeliveryWorker | None = None
        self.secret = b""
        self.streams: set[asyncio.Task[Any]] = set()
        self.bootstrap_key: str | None = None
        self.checkpoints: CheckpointPublisher | None = None
        self.login_limiter: LoginThrottle = FailureLimiter(
            config.login_max_failures, config.login_window_seconds
        )
        self.coordination: Coordination | None = None
        #: Verified API keys (``runs.credentials.KeyCache``); ``None`` where this process
        #: cannot hear another process's revocation before its next request (PostgreSQL).
        self.key_cache: KeyCache | None = None
        #: The open SSE streams by credential, ended by its revocation or expiry.
        self.guards: StreamGuards

    def default_provider(self, route: Route) -> Provider:
        """One provider per route (one HTTP client and connection pool), closed at stop."""
        provider = self._providers.get(route.id)
        if provider is None:
            if route.provider == "scripted":
                provider = ScriptedProvider()
            else:
                # The SDK is the heaviest import by far: loaded for the first run that needs it,
                # not at start-up (README.md, "Deploy": start-up time).
                from runs.providers.anthropic import AnthropicProvider

                provider = AnthropicProvider(route, self.routes.api_key(route))
            self._providers[route.id] = provider
        return provider

    async def start(self) -> None:
        self.store = await open_event_store(self.config.db, all_projections())
        self.store.commit_observers.append(metrics.observe_commit)
        self.store.reconnect_observers.append(metrics.observe_reconnect)
        if not is_postgres_url(self.config.db):
            self.key_cache = KeyCache()
            self.store.live.watch(self.key_cache.observe)
        try:
            # Leases (which process drives which run) and, on PostgreSQL, the login throttle's
            # counts: coordination between the processes that serve one log.
            self.coordination = await open_coordination(
                self.config.db, process_id(), self.config.lease_seconds
            )
            if self.coordination.failures is not None:
                self.login_limiter = SharedFailureLimiter(
                    self.coordination.failures,
                    self.config.login_max_failures,
                    self.config.login_window_seconds,
                )
            self.queries = Queries(self.store)
            self.guards = StreamGuards(self.queries)
            self.store.live.watch(self.guards.observe)
            self.accounts = Accounts(self.store)
            async with startup_lock(self.config.db):
                await record_personas(self.store, self.queries, self.personas)
                self.bootstrap_key = await bootstrap(self.accounts, self.env)
            self.secret = load_secret(self.config)
            self.supervisor = Supervisor(
                store=self.store,
                queries=self.queries,
                routes=self.routes,
                personas=self.personas,
                tools=self.tools,
                provider_for=self.provider_for,
                coalesce_s=self.config.delta_coalesce_ms / 1000,
                storage_retry_s=self.config.storage_retry_seconds,
                leases=self.coordination.leases,
            )
            self.service = RunService(
                store=self.store,
                queries=self.queries,
                supervisor=self.supervisor,
                routes=self.routes,
                personas=self.personas,
                max_live_runs_per_org=self.config.max_live_runs_per_org,
            )
            self.webhooks = WebhookService(
                self.store,
                self.secret,
                allow_private=self.config.webhooks_allow_private,
                max_per_org=self.config.webhooks_max_endpoints_per_org,
            )
            self.mcp_servers.start(self.personas.by_id.values())
            await self.supervisor.resume_all()
            self.supervisor.start()
            self.deliveries = self.start_deliveries()
            if self.config.checkpoint_key_file:
                self.checkpoints = CheckpointPublisher(
                    self.store,
                    load_private_key(self.config.checkpoint_key_file),
                    self.config.checkpoint_sink,
                    self.config.checkpoint_seconds,
                )
                self.checkpoints.start()
        except BaseException:
            await self.mcp_servers.close()
            if self.coordination is not None:
                await self.coordination.close()
            await self.store.close()
            raise

    def start_deliveries(self) -> DeliveryWorker:
        """The webhook outbox worker (docs/architecture.md, "Webhooks")."""
        config = self.config
        worker = DeliveryWorker(
            self.store,
            self.secret,
            timeout_s=config.webhooks_timeout_seconds,
            retry=Retry(
                base_s=config.webhooks_retry_base_seconds,
                max_delay_s=config.webhooks_retry_max_delay_seconds,
                give_up_after_s=config.webhooks_retry_for_seconds,
            ),
            allow_private=config.webhooks_allow_private,
        )
        worker.start()
        return worker

    async def stop_intake(self) -> None:
        """First step of a graceful shutdown: no new runs, SSE streams end cleanly."""
        self.supervisor.accepting = False
        for task in list(self.streams):
            task.cancel()
        if self.streams:
            await asyncio.wait(list(self.streams), timeout=self.config.shutdown_timeout_seconds)

    async def stop(self) -> None:
        """Stop run tasks (their appends commit; the runs stay resumable), close the log."""
        await self.stop_intake()
        await self.supervisor.shutdown(self.config.shutdown_timeout_seconds)
        if self.deliveries is not None:
            await self.deliveries.stop(self.config.shutdown_timeout_seconds)
        await self.mcp_servers.close()
        for provider in self._providers.values():
            aclose = getattr(provider, "aclose", None)
            if aclose is not None:
                await aclose()
        if self.checkpoints is not None:
            await self.checkpoints.stop()  # the head at shutdown is signed too
        if self.coordination is not None:
            await self.coordination.close()
        await self.store.close()
        metrics.process_exited()


RUNTIME = web.AppKey("runtime", Runtime)
TRACE_ID = web.RequestKey("trace_id", str)
PRINCIPAL = web.RequestKey("principal", Principal)
#: The run a request created or acted on, for its log line.
RUN_ID = web.RequestKey("run_id", str)
#: ``StreamGuards.endings`` before the request was authenticated.
CREDENTIAL_ENDINGS = web.RequestKey("credential_endings", int)


# -- helpers ----------------------------------------------------------------------------------

_json = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")


def error_response(
    status: int, code: str, message: str, trace_id: str, details: dict[str, Any] | None = None
) -> web.Response:
    return json_response(Error(code, message, details or {}, trace_id), status)


def principal(request: web.Request) -> Principal:
    who: Principal = request[PRINCIPAL]
    return who


# -- middleware -------------------------------------------------------------------------------


def check_declared_size(request: web.Request) -> None:
    """Refuse a body on its Content-Length, before a byte of it is read. A body
    without one (chunked) is cut off by ``client_max_size`` as it is read."""
    limit = request.app[RUNTIME].config.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ValidationFailed(
            f"the body is {declared} bytes; at most {limit} are accepted",
            code="validation.body_too_large",
            max_bytes=limit,
        )


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: the 413 at once for a declared body over the limit; else
    aiohttp's own answer (``100 Continue``, or 417 for an unknown expectation)."""
    try:
        check_declared_size(request)
    except ValidationFailed as exc:
        trace_id = new_trace_id()
        response = error_response(exc.status, exc.code, exc.message, trace_id, exc.details)
        response.headers["X-Trace-Id"] = trace_id
        response.force_close()
        log.info("request", method=request.method, path=request.path, status=exc.status)
        return response
    await _default_expect_handler(request)
    return None


@web.middleware
async def trace_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Trace id on every response, auth on ``/v1``, errors in the documented shape, and one
    log line and one sample of the request metrics per request."""
    incoming = request.headers.get("X-Trace-Id", "")
    trace_id = incoming if _TRACE_ID_FORMAT.match(incoming) else new_trace_id()
    request[TRACE_ID] = trace_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(trace_id=trace_id)
    started = time.perf_counter()
    status = 500
    try:
        check_declared_size(request)
        if request.path.startswith("/v1/") and request.path not in _PUBLIC_PATHS:
            request[PRINCIPAL] = await authenticate(request)
        response = await handler(request)
        status = response.status
        return response
    except RunsError as exc:
        status = exc.status
        return error_response(status, exc.code, exc.message, trace_id, exc.details)
    except web.HTTPException as exc:
        # aiohttp's own refusals (no such route, method, a body over client_max_size).
        code, message = {
            404: ("not_found", "no such resource"),
            405: ("validation.method_not_allowed", "method not allowed on this resource"),
            413: ("validation.body_too_large", "the request body is too large"),
        }.get(
            exc.status, ("validation.error" if exc.status < 500 else "internal.error", exc.reason)
        )
        status = exc.status
        return error_response(status, code, message, trace_id)
    except StoreClosedError:
        status = status_of("internal.unavailable")
        return error_response(status, "internal.unavailable", "the service is stopping", trace_id)
    except StorageUnavailable:
        # Nothing was written; the same request may succeed once the log can be written.
        status = status_of("internal.unavailable")
        return error_response(
            status, "internal.unavailable", "the log cannot be written now", trace_id
        )
    except EventStoreError:
        log.exception("request.store_error")
        return error_response(500, "internal.error", "internal error", trace_id)
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    except Exception:
        log.exception("request.failed")
        return error_response(500, "internal.error", "internal error", trace_id)
    finally:
        log_request(request, status, time.perf_counter() - started)


def new_trace_id() -> str:
    """32 random hex digits."""
    return os.urandom(16).hex()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(request: web.Request) -> str:
    """The matched route as declared (``/v1/runs/{run_id}``), never the raw path: ids would
    make every request its own series and put user input in the logs."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def log_request(request: web.Request, status: int, seconds: float) -> None:
    """The request's log line, with what takes an operator from it to ``runlog export --run``
    (never a token), and its metrics."""
    route = route_template(request)
    # A method is any token a client sends: those the API does not know share one series.
    method = request.method if request.method in _METHODS else "OTHER"
    metrics.labeled(metrics.HTTP_REQUESTS, route, method, str(status)).inc()
    metrics.labeled(metrics.HTTP_REQUEST_SECONDS, route, method).observe(seconds)
    who = request.get(PRINCIPAL)
    run_id = request.get(RUN_ID) or request.match_info.get("run_id")
    logs.info(
        log,
        "request",
        method=request.method,
        route=route,
        status=status,
        duration_ms=round(seconds * 1000, 2),
        trace_id=request.get(TRACE_ID),
        org_id=who.org_id if who is not None else None,
        user_id=who.user_id if who is not None else None,
        run_id=run_id if run_id is not None and is_id(run_id) else None,
    )


async def add_trace_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: streamed responses (SSE) get the header too."""
    response.headers["X-Trace-Id"] = request.get(TRACE_ID, "")


async def authenticate(request: web.Request) -> Principal:
    runtime = request.app[RUNTIME]
    request[CREDENTIAL_ENDINGS] = runtime.guards.endings
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or not token.isascii() or " " in token:
        # Hash anyway so a malformed header costs what a wrong key costs.
        key_sha256(token)
        raise Unauthorized("a valid Bearer token is required")
    if len(request.headers.getall("Authorization", ())) > 1:
        raise Unauthorized("send one Authorization header")
    claims = verify_access_token(runtime.secret, token)
    if claims is not None:
        user = await runtime.queries.user(claims.sub)
        if user is None or user["deleted_at"] is not None:
            raise Unauthorized("a valid Bearer token is required")
        return Principal(claims.sub, claims.org, expires_at=claims.exp)
    sha256 = key_sha256(token)
    cache = runtime.key_cache
    if cache is not None:
        known = cache.get(sha256)
        if known is not None:
            return known
        generation = cache.generation
    key = await runtime.queries.api_key_by_hash(sha256)
    if key is None or key["revoked_at"] is not None or key["user_deleted_at"] is not None:
        raise Unauthorized("a valid Bearer token is required")
    who = Principal(key["user_id"], key["org_id"], key_id=key["key_id"])
    if cache is not None:
        cache.put(sha256, who, generation)
    return who


# -- handlers: health and auth ----------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if runtime.store.closed:
        return json_response({"status": "not_ready", "reason": "stopping"}, 503)
    reason = await runtime.queries.not_ready_reason()
    if reason is not None:
        return json_response({"status": "not_ready", "reason": reason}, 503)
    fault = await runtime.store.check_writable()
    if fault is not None:
        return json_response({"status": "not_ready", "reason": f"log not writable: {fault}"}, 503)
    return json_response({"status": "ready", "head": await runtime.store.head()})


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document, generated from ``runs.schemas`` (``runs.openapi``, imported
    with the first request for it: start-up does not need it)."""
    from runs.openapi import document_bytes

    return web.Response(body=document_bytes(), content_type="application/json")


async def metrics_text(request: web.Request) -> web.Response:
    """Prometheus metrics (``runs.metrics``); with ``metrics_token`` set, only for its bearer."""
    runtime = request.app[RUNTIME]
    expected = runtime.config.metrics_token
    if expected:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), expected.encode()
        ):
            raise Unauthorized("Authorization: Bearer <metrics_token> is required")
    body = metrics.exposition(
        await runtime.queries.live_runs_by_status(), await runtime.store.head()
    )
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def login(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    body = await read_body(request, Login, runtime.config.request_read_timeout_seconds)
    # Throttled per user (a name and an email are one user; an unknown login is its own key)
    # and per client address. Only failures count; the attempts on one user take turns, so
    # concurrent guesses cannot all pass the check while the slow password hashes run.
    user = await runtime.queries.user_by_login(body.login)
    by_user = f"user:{user['user_id']}" if user else f"login:{body.login.casefold()}"
    by_address = f"address:{request.remote}"
    limiter = runtime.login_limiter
    async with limiter.exclusive(by_user):
        wait = await limiter.wait_seconds((by_user, by_address))
        if wait > 0:
            raise RateLimited(
                "too many failed logins; try again later",
                code="auth.rate_limited",
                retry_after_seconds=math.ceil(wait),
            )
        encoded = user["password_hash"] if user and user["password_hash"] else None
        ok = await asyncio.to_thread(verify_password, body.password, encoded or DUMMY_PASSWORD_HASH)
        if user is None or encoded is None or not ok:
            await limiter.record_failure((by_user, by_address))
            raise Unauthorized("wrong login or password")
        await limiter.record_success(by_user)
    ttl = runtime.config.access_token_ttl_seconds
    token = sign_access_token(runtime.secret, user["user_id"], user["org_id"], ttl)
    return json_response(LoginResult(access_token=token, expires_in=ttl))


# -- handlers: threads and messages -----------------------------------------------------------


def shaped(kind: type[S], row: Mapping[str, Any], **values: Any) -> S:
    """A response struct from a query row: each of its fields the row has, then ``values``."""
    fields = {name: row[name] for name in kind.__struct_fields__ if name in row}
    fields.update(values)
    return kind(**fields)


async def create_thread(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    who = principal(request)
    body = await read_body(request, CreateThread, runtime.config.request_read_timeout_seconds)
    created = await runtime.service.create_thread(who, body.title)
    return json_response(shaped(Thread, runtime.queries.created_thread(*created)), 201)


async def list_threads(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    rows = await runtime.queries.threads(
        principal(request).org_id, query_limit(request), query_before(request)
    )
    return json_response([shaped(Thread, r) for r in rows])


async def get_thread(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    row = await runtime.queries.thread(principal(request).org_id, path_id(request, "thread_id"))
    if row is None:
        raise NotFound("thread not found")
    return json_response(shaped(Thread, row))


async def add_message(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    who = principal(request)
    thread_id = path_id(request, "thread_id")
    body = await read_body(request, CreateMessage, runtime.config.request_read_timeout_seconds)
    added = await runtime.service.add_message(who, thread_id, body.content)
    return json_response(shaped(Message, runtime.queries.added_message(*added)), 201)


async def owned_thread_id(request: web.Request) -> str:
    """The path's thread id, if the thread exists in the caller's org (else 404)."""
    thread_id = path_id(request, "thread_id")
    if await request.app[RUNTIME].queries.thread(principal(request).org_id, thread_id) is None:
        raise NotFound("thread not found")
    return thread_id


async def list_messages(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    thread_id = await owned_thread_id(request)
    rows = await runtime.queries.messages(thread_id, query_limit(request))
    return json_response([shaped(Message, r) for r in rows])


# -- handlers: runs ---------------------------------------------------------------------------


async def create_run(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    who = principal(request)
    thread_id = path_id(request, "thread_id")
    body = await read_body(request, CreateRun, runtime.config.request_read_timeout_seconds)
    if not runtime.supervisor.accepting:
        raise Unavailable("the service is shutting down")
    run_id = await runtime.service.create_run(
        who, thread_id, body.route_id, body.persona_id, request[TRACE_ID]
    )
    request[RUN_ID] = run_id
    return json_response(RunCreated(run_id=run_id, trace_id=request[TRACE_ID]), 201)


async def list_thread_runs(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    thread_id = await owned_thread_id(request)
    rows = await runtime.queries.thread_runs(thread_id, query_limit(request))
    return json_response([shaped(ThreadRun, r) for r in rows])


async def list_runs(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    limit = query_limit(request)
    before = query_before(request)
    status = request.query.get("status")
    if status is not None and status not in RUN_STATUSES:
        raise ValidationFailed(
            f"status must be one of {', '.join(RUN_STATUSES)}",
            code="validation.status",
            field="status",
        )
    rows = await runtime.queries.runs(principal(request).org_id, limit, before, status)
    return json_response([shaped(Run, r) for r in rows])


async def get_run(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    run_id = path_id(request, "run_id")
    as_of = query_seq("as_of_seq", request.query.get("as_of_seq"))
    row = await runtime.queries.run(principal(request).org_id, run_id)
    if row is None:
        raise NotFound("run not found")
    if as_of is not None:
        return json_response(await _run_as_of(runtime, row, as_of))
    return json_response(shaped(RunDetail, row, usage_estimated=bool(row["usage_estimated"])))


async def _run_as_of(runtime: Runtime, row: Mapping[str, Any], as_of: int) -> RunDetail:
    """The run as it stood right after seq ``as_of``: a fold of its first events."""
    events = await runtime.store.read_stream(run_stream(row["run_id"]), 0, as_of or 1)
    last = await runtime.store.last_seq(run_stream(row["run_id"]))
    if as_of < 1 or as_of > last:
        raise ValidationFailed(
            f"as_of_seq must be from 1 to the run's last seq ({last})",
            code="validation.as_of_seq",
            field="as_of_seq",
        )
    state = fold_recorded(events)
    assert state is not None
    return shaped(
        RunDetail,
        row,
        status=state.status,
        total_input_tokens=state.total_input_tokens,
        total_output_tokens=state.total_output_tokens,
        total_cost_usd=state.total_cost_usd,
        duration_ms=state.duration_ms,
        cache_hit_rate=state.cache_hit_rate,
        credits_used=state.credits_used,
        completed_at=state.completed_at,
        failed_at=state.failed_at,
        cancelled_at=state.cancelled_at,
        trace_id=state.trace_id,
        route_id=state.route_id,
        error_class=state.error_class,
        error_message=state.error_message,
        as_of_seq=as_of,
        usage_estimated=state.usage_estimated,
        retry_of=state.retry_of,
    )


async def cancel_run(request: web.Request) -> web.Response:
    """``:cancel`` and its alias ``/cancel``: the receipt of how the run ended."""
    runtime = request.app[RUNTIME]
    state = await runtime.service.cancel_run(principal(request), path_id(request, "run_id"))
    outcomes = cancel_receipt(state)
    return json_response(
        CancelReceipt(
            status=state.status,
            last_seq=state.seq,
            tool_calls=ToolCallsReceipt(
                completed=outcomes.completed,
                interrupted=outcomes.interrupted,
                not_started=outcomes.not_started,
            ),
        )
    )


async def retry_run(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    run_id = path_id(request, "run_id")
    if not runtime.supervisor.accepting:
        raise Unavailable("the service is shutting down")
    new_run_id = await runtime.service.retry_run(principal(request), run_id, request[TRACE_ID])
    return json_response(RunCreated(run_id=new_run_id, trace_id=request[TRACE_ID]), 201)


async def submit_input(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    run_id = path_id(request, "run_id")
    body = await read_body(request, SubmitInput, runtime.config.request_read_timeout_seconds)
    if not body.content.strip():
        raise ValidationFailed(
            "content must be a non-empty string", code="validation.content", field="content"
        )
    size = len(body.content.encode("utf-8", "surrogatepass"))
    if size > MAX_INPUT_BYTES:
        raise ValidationFailed(
            f"content is {size} bytes; at most {MAX_INPUT_BYTES} bytes of UTF-8 are accepted",
            code="validation.content_too_large",
            field="content",
            max_bytes=MAX_INPUT_BYTES,
        )
    await runtime.service.submit_input(principal(request), run_id, body.content)
    return json_response(Ok())


async def list_tools(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    persona = runtime.personas.resolve(request.query.get("persona_id"))
    return json_response(
        [
            ToolInfo(
                name=tool.name,
                description=tool.description,
                input_schema=tool.input_schema,
                source=tool.source,
                mcp_server=tool.mcp_server,
                requires_confirmation=persona_allows(persona.confirm_tools, tool.name),
                safe_to_repeat=tool.safe_to_repeat,
            )
            for tool in await runtime.tools.offered(persona.tools)
        ]
    )


async def usage_report(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    query = usage_query(request.query, dt.datetime.now(dt.UTC).date())
    rows = await runtime.queries.usage(
        principal(request).org_id, query.first_day, query.last_day, query.group_by
    )
    return json_response(
        UsageReport(
            from_=query.first_day,
            to=query.last_day,
            group_by=query.group_by,
            rows=[shaped(UsageRow, r) for r in rows],
        )
    )


# -- SSE --------------------------------------------------------------------------------------


async def run_events(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    run_id = path_id(request, "run_id")
    after_seq = query_seq("after_seq", request.query.get("after_seq"))
    if after_seq is None:
        after_seq = query_seq("after_seq", request.headers.get("Last-Event-ID")) or 0
    follow_raw = request.query.get("follow", "1")
    if follow_raw not in {"0", "1", "true", "false"}:
        raise ValidationFailed("follow must be 0 or 1", code="validation.follow", field="follow")
    follow = follow_raw in {"1", "true"}
    status = await runtime.queries.run_status(run_id, principal(request).org_id)
    if status is None:
        raise NotFound("run not found")

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    task = asyncio.current_task()
    release: Callable[[], None] | None = None
    if task is not None:
        runtime.streams.add(task)
    # Counted before the first byte and uncounted before the last, so a client that has
    # seen the stream open (or end) sees the gauge agree.
    metrics.SSE_CONNECTIONS.inc()
    last = b""
    try:
        if task is not None:
            # Revoking the key, deleting the user or the token's expiry ends the stream.
            release = await runtime.guards.guard(
                principal(request), task, request.get(CREDENTIAL_ENDINGS, -1)
            )
        last = await stream_events(
            runtime.store,
            response,
            run_stream(run_id),
            after_seq=after_seq,
            follow=follow,
            ended=status in TERMINAL_STATUSES,
            batch_limit=runtime.config.sse_batch_limit,
            heartbeat_s=runtime.config.sse_heartbeat_seconds,
            transport=request.transport,
            # The opening comment: a client sees the stream open before any event comes.
            opening=b": ping\n\n",
        )
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the client left, the credential ended, or the server is stopping
    finally:
        metrics.SSE_CONNECTIONS.dec()
        if release is not None:
            release()
        if task is not None:
            runtime.streams.discard(task)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof(last)
    return response


def _webhook_context(request: web.Request) -> tuple[WebhookService, Principal, float]:
    runtime = request.app[RUNTIME]
    return runtime.webhooks, principal(request), runtime.config.request_read_timeout_seconds


# -- the application --------------------------------------------------------------------------


def add_routes(app: web.Application) -> None:
    run = "{run_id:[^{}/:]+}"
    # aiohttp tries the routes that share a path's static start (``/v1/threads``, ``/v1/runs``)
    # one regular expression at a time, in the order they were added: the agent loop's own
    # routes come first. No two of these patterns match the same path, so the order changes
    # nothing else.
    app.router.add_post("/v1/threads", create_thread)
    app.router.add_get("/v1/threads", list_threads)
    app.router.add_post("/v1/threads/{thread_id}/messages", add_message)
    app.router.add_get("/v1/threads/{thread_id}/messages", list_messages)
    app.router.add_post("/v1/threads/{thread_id}/runs", create_run)
    app.router.add_get("/v1/threads/{thread_id}/runs", list_thread_runs)
    app.router.add_get(f"/v1/runs/{run}/events", run_events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_post("/v1/auth/login", login)
    app.router.add_get("/v1/threads/{thread_id}", get_thread)
    app.router.add_get("/v1/runs", list_runs)
    app.router.add_get(f"/v1/runs/{run}", get_run)
    app.router.add_post(f"/v1/runs/{run}:cancel", cancel_run)
    app.router.add_post(f"/v1/runs/{run}/cancel", cancel_run)  # what Arkloop's clients call
    app.router.add_post(f"/v1/runs/{run}/retry", retry_run)
    app.router.add_post(f"/v1/runs/{run}/input", submit_input)
    app.router.add_get("/v1/tools", list_tools)
    app.router.add_get("/v1/usage", usage_report)
    app.router.add_get("/", console_index)
    app.router.add_get("/console/{name}", console_asset)
    hooks, endpoint = WebhookHandlers(_webhook_context), "/v1/webhook-endpoints/{endpoint_id}"
    app.router.add_post("/v1/webhook-endpoints", hooks.create)
    app.router.add_get("/v1/webhook-endpoints", hooks.list)
    app.router.add_get(endpoint, hooks.get)
    app.router.add_delete(endpoint, hooks.delete)
    app.router.add_get(f"{endpoint}/deliveries", hooks.deliveries)


def create_app(
    config: Config,
    *,
    env: Mapping[str, str] | None = None,
    tools: Sequence[Tool] = (),
    provider_for: Callable[[Route], Provider] | None = None,
) -> web.Application:
    """The aiohttp application. The log is opened on start-up and closed on cleanup."""
    runtime = Runtime(config, dict(os.environ if env is None else env), tools, provider_for)
    app = web.Application(middlewares=[trace_and_errors], client_max_size=config.max_body_bytes)
    app[RUNTIME] = runtime
    add_routes(app)
    for route in app.router.routes():
        # aiohttp answers "100 Continue" before any middleware runs: a body that is declared too
        # large is refused here instead, before the client sends it.
        route._expect_handler = expect_continue
    app.on_response_prepare.append(add_trace_header)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await runtime.start()
        yield
        await runtime.stop()

    async def on_shutdown(app: web.Application) -> None:
        await runtime.stop_intake()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    return app
