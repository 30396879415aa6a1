"""The OpenAPI 3.1 document of the HTTP API (``GET /openapi.json``).

Request and response schemas are generated from the msgspec types in ``runs.schemas`` — the
same types the handlers decode and encode — so the contract cannot drift from the code. What
msgspec cannot know (paths, parameters, status codes, security) lives in ``OPERATIONS``, one
row per route of ``server.add_routes``, in the order a reader meets them (the routes are added
in the order the router should try them); a test checks that the two agree.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import msgspec

from projections.usage import USAGE_GROUPS
from runs.console import ASSET_NAMES
from runs.errors import ERROR_FAMILIES, ERROR_STATUS
from runs.run import RUN_STATUSES
from runs.schemas import (
    MAX_INPUT_BYTES,
    CancelReceipt,
    CreateMessage,
    CreateRun,
    CreateThread,
    CreateWebhookEndpoint,
    Error,
    Login,
    LoginResult,
    Message,
    NewWebhookEndpoint,
    Ok,
    Run,
    RunCreated,
    RunDetail,
    SseFrame,
    SubmitInput,
    Thread,
    ThreadRun,
    ToolInfo,
    UsageReport,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = ["OPERATIONS", "Operation", "Param", "document", "document_bytes"]

REF_TEMPLATE = "#/components/schemas/{name}"

#: What ``runs.ids.is_id`` accepts: a canonical lowercase UUID.
ID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
#: ``server.query_seq`` reads at most 15 digits.
MAX_SEQ = 10**15 - 1

# The two health handlers answer small dicts that have no msgspec type.
_HEALTH = {
    "type": "object",
    "properties": {"status": {"type": "string"}, "head": {"type": "integer"}},
    "required": ["status"],
}
_DOCUMENT = {"type": "object", "description": "This document."}


def _error_descriptions() -> dict[int, str]:
    """Each error status with every code that answers with it (from ``runs.errors``)."""
    codes: dict[int, list[str]] = {}
    for code, (status, meaning) in ERROR_STATUS.items():
        codes.setdefault(status, []).append(f"`{code}`: {meaning}.")
    for _, (status, meaning) in ERROR_FAMILIES.items():
        codes.setdefault(status, []).insert(0, f"{meaning}.")
    return {status: " ".join(texts) for status, texts in sorted(codes.items())}


_ERRORS = _error_descriptions()


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "query" | "path" | "header"
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    status: int
    response: Any  # a msgspec-understood type, a literal JSON schema (dict) or None
    body: type | None = None
    body_required: bool = False
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    auth: bool = True
    media_type: str = "application/json"
    description: str = ""


def _id(name: str, what: str) -> Param:
    return Param(
        name, "path", {"type": "string", "pattern": ID_PATTERN}, f"The {what}'s id.", required=True
    )


LIMIT = Param(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
    "Maximum number of items to return.",
)
BEFORE = Param(
    "before",
    "query",
    {"type": "string", "pattern": ID_PATTERN},
    "Cursor: the id of the last item of the previous page.",
)
STATUS = Param(
    "status", "query", {"type": "string", "enum": list(RUN_STATUSES)}, "Only runs in this status."
)
AS_OF_SEQ = Param(
    "as_of_seq",
    "query",
    {"type": "integer", "minimum": 1, "maximum": MAX_SEQ},
    "The run as it stood right after this seq of its stream (1 to the run's last seq).",
)
AFTER_SEQ = Param(
    "after_seq",
    "query",
    {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
    "Start after this seq (for reconnection). Default: `Last-Event-ID`, else 0.",
)
FOLLOW = Param(
    "follow",
    "query",
    {"type": "string", "enum": ["0", "1", "true", "false"], "default": "1"},
    "`1` (default) tails the run live until its terminal event; `0` sends history and closes.",
)
LAST_EVENT_ID = Param(
    "Last-Event-ID",
    "header",
    {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
    "The standard SSE reconnection header; used as `after_seq` when that is absent.",
)
PERSONA_ID = Param(
    "persona_id",
    "query",
    {"type": "string", "maxLength": 200},
    "The persona (`key@version`, or a bare `key` for its latest version); default persona"
    " when absent or empty.",
)
_DAY = {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
FROM_DAY = Param(
    "from", "query", _DAY, "First UTC day of the report, included. Default: 29 days before `to`."
)
TO_DAY = Param("to", "query", _DAY, "Last UTC day of the report, included. Default: today (UTC).")
GROUP_BY = Param(
    "group_by",
    "query",
    {"type": "string", "enum": list(USAGE_GROUPS), "default": "day"},
    "One row per UTC day, model, user id or route id.",
)
THREAD_ID = _id("thread_id", "thread")
ENDPOINT_ID = _id("endpoint_id", "webhook endpoint")
RUN_ID = _id("run_id", "run")

_SSE_DESCRIPTION = (
    "Server-Sent Events. The stream opens with a `: ping` comment, which is repeated after"
    " `sse_heartbeat_seconds` of silence. Each event of the run is one frame:\n\n"
    "```\nid: <seq>\ndata: <one line of JSON>\n\n```\n\n"
    "The `data:` JSON is exactly `{seq, type, data, created_at}` (schema `SseFrame`; the"
    " response schema describes one event, as OpenAPI 3.2's `itemSchema` would); `data` is the"
    " event's payload and `id` equals `seq`; a `message.delta`'s data carries its text as both"
    " `content` and `content_delta`. There is no `event:` line. With `follow=1` the stream"
    " closes right after `run.completed`, `run.failed` or `run.cancelled`; a cursor at the end"
    " of a finished run gets no frame and the stream closes at once. It also closes within a"
    " second when the API key that opened it is revoked or its user deleted, and when the"
    " access token that opened it expires."
)

_CANCEL_DESCRIPTION = (
    "Answers when the run is terminal: `status` (how it ended: `cancelled`, or `completed` /"
    " `failed` if it had already ended), `last_seq` (its last event) and `tool_calls`:"
    " `completed` (the result is in the log: side effects happened), `interrupted` (cut while"
    " running: a side effect may have happened), `not_started` (requested, never run). The"
    " same receipt is recorded in the `run.cancelled` event."
)

_WEBHOOK_DESCRIPTION = (
    "Each event of `events` (default: `run.completed`, `run.failed`, `run.cancelled`,"
    " `run.waiting_for_input`) of the org's runs is POSTed to `url` as"
    " `{id, type, run_id, thread_id, org_id, seq, created_at, data}` with the headers"
    ' `Runlog-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>` and'
    " `Runlog-Delivery: <id>`, at least once, in order per run, retried with exponential"
    " backoff; 2xx within `webhooks_timeout_seconds` is success and 410 disables the endpoint."
    " A loopback or private target is `422 policy.webhook_private_target` unless"
    " `webhooks_allow_private = true`."
)

#: One row per route of ``server.add_routes``.
OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/healthz", "healthz", "Liveness", 200, _HEALTH, auth=False, errors=(500,)),
    Operation(
        "GET",
        "/readyz",
        "readyz",
        "Readiness: the log is open and every projection is caught up",
        200,
        _HEALTH,
        auth=False,
        errors=(500, 503),
        description='503 with `{"status": "not_ready", "reason": "..."}` while projections'
        " catch up, while stopping, or while the log cannot be written (disk full).",
    ),
    Operation(
        "GET", "/openapi.json", "openapi", "This OpenAPI document", 200, _DOCUMENT, auth=False
    ),
    Operation(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus metrics (text format)",
        200,
        {"type": "string"},
        auth=False,
        errors=(401,),
        media_type="text/plain",
        description=(
            "Not behind `/v1` auth. When the config sets `metrics_token`, it needs"
            " `Authorization: Bearer <metrics_token>` (else `401 auth.unauthorized`)."
        ),
    ),
    Operation(
        "POST",
        "/v1/auth/login",
        "login",
        "Exchange a login and password for a short-lived access token",
        200,
        LoginResult,
        body=Login,
        body_required=True,
        errors=(400, 401, 413, 415, 429),
        auth=False,
        description=(
            "After `login_max_failures` failures within `login_window_seconds`, for one login or"
            " from one client address, further attempts answer `429 auth.rate_limited`."
        ),
    ),
    Operation(
        "POST",
        "/v1/threads",
        "createThread",
        "Create a thread",
        201,
        Thread,
        body=CreateThread,
        errors=(400, 413, 415),
    ),
    Operation(
        "GET",
        "/v1/threads",
        "listThreads",
        "The org's threads, newest first",
        200,
        list[Thread],
        params=(LIMIT, BEFORE),
        errors=(400,),
    ),
    Operation(
        "GET",
        "/v1/threads/{thread_id}",
        "getThread",
        "One thread",
        200,
        Thread,
        params=(THREAD_ID,),
        errors=(404,),
    ),
    Operation(
        "POST",
        "/v1/threads/{thread_id}/messages",
        "addMessage",
        "Add a user message to a thread",
        201,
        Message,
        body=CreateMessage,
        body_required=True,
        params=(THREAD_ID,),
        errors=(400, 404, 413, 415),
    ),
    Operation(
        "GET",
        "/v1/threads/{thread_id}/messages",
        "listMessages",
        "A thread's messages, oldest first",
        200,
        list[Message],
        params=(THREAD_ID, LIMIT),
        errors=(400, 404),
    ),
    Operation(
        "POST",
        "/v1/threads/{thread_id}/runs",
        "createRun",
        "Start an agent run on a thread",
        201,
        RunCreated,
        body=CreateRun,
        params=(THREAD_ID,),
        errors=(400, 404, 409, 413, 415, 422, 429),
    ),
    Operation(
        "GET",
        "/v1/threads/{thread_id}/runs",
        "listThreadRuns",
        "A thread's runs, newest first",
        200,
        list[ThreadRun],
        params=(THREAD_ID, LIMIT),
        errors=(400, 404),
    ),
    Operation(
        "GET",
        "/v1/runs",
        "listRuns",
        "The org's runs, newest first, with accounting",
        200,
        list[Run],
        params=(LIMIT, BEFORE, STATUS),
        errors=(400,),
    ),
    Operation(
        "GET",
        "/v1/runs/{run_id}",
        "getRun",
        "One run (optionally as it stood at a seq)",
        200,
        RunDetail,
        params=(RUN_ID, AS_OF_SEQ),
        errors=(400, 404),
    ),
    Operation(
        "POST",
        "/v1/runs/{run_id}:cancel",
        "cancelRun",
        "Cancel a run (a finished run is left as it is); answers the cancel receipt",
        200,
        CancelReceipt,
        params=(RUN_ID,),
        errors=(404, 409),
        description=_CANCEL_DESCRIPTION,
    ),
    Operation(
        "POST",
        "/v1/runs/{run_id}/cancel",
        "cancelRunAlias",
        "Cancel a run: the same as `POST /v1/runs/{run_id}:cancel`",
        200,
        CancelReceipt,
        params=(RUN_ID,),
        errors=(404, 409),
        description="An alias of `:cancel` (the path Arkloop's clients call). "
        + _CANCEL_DESCRIPTION,
    ),
    Operation(
        "POST",
        "/v1/runs/{run_id}/retry",
        "retryRun",
        "Answer a failed or cancelled run's user turn again, in a new run",
        201,
        RunCreated,
        params=(RUN_ID,),
        errors=(404, 409, 422, 429),
        description=(
            "The run must be failed or cancelled and the thread's latest (no later run or"
            " message), else `409 runs.not_retryable` / `runs.not_latest`. The new run has the"
            " same thread, route and persona; its `run.started` carries `retry_of`, and the old"
            " run's partial output is not part of its conversation."
        ),
    ),
    Operation(
        "POST",
        "/v1/runs/{run_id}/input",
        "submitInput",
        "Answer a run that waits for input",
        200,
        Ok,
        body=SubmitInput,
        body_required=True,
        params=(RUN_ID,),
        errors=(400, 404, 409, 413, 415),
        description=f"`content` is at most {MAX_INPUT_BYTES} bytes of UTF-8.",
    ),
    Operation(
        "GET",
        "/v1/runs/{run_id}/events",
        "runEvents",
        "The run's events as Server-Sent Events",
        200,
        None,
        params=(RUN_ID, AFTER_SEQ, FOLLOW, LAST_EVENT_ID),
        errors=(400, 404),
        media_type="text/event-stream",
        description=_SSE_DESCRIPTION,
    ),
    Operation(
        "GET",
        "/v1/tools",
        "listTools",
        "The tools a persona may use: built-in, tool_modules and MCP servers' tools",
        200,
        list[ToolInfo],
        params=(PERSONA_ID,),
        errors=(400, 422),
        description="An MCP server that has not listed its tools yet (it is down or still"
        " starting) contributes none; its tools appear once it answers.",
    ),
    Operation(
        "GET",
        "/v1/usage",
        "getUsage",
        "The org's usage by UTC day, model, user or route",
        200,
        UsageReport,
        params=(FROM_DAY, TO_DAY, GROUP_BY),
        errors=(400,),
        description=(
            "`runs` counts the runs started in the period; tokens, `cost_usd` and `credits_used`"
            " are what model calls reported in the period. Rows are ordered by `key`."
        ),
    ),
    Operation(
        "GET",
        "/",
        "console",
        "The browser console (README.md, Console)",
        200,
        {"type": "string"},
        auth=False,
        media_type="text/html",
        description="A page that signs in with a token and calls this API; no auth to load.",
    ),
    Operation(
        "GET",
        "/console/{name}",
        "consoleFile",
        "A file of the browser console (module, stylesheet)",
        200,
        {"type": "string"},
        params=(
            Param("name", "path", {"type": "string", "enum": list(ASSET_NAMES)}, "The file.", True),
        ),
        errors=(404,),
        auth=False,
        media_type="text/*",
    ),
    Operation(
        "POST",
        "/v1/webhook-endpoints",
        "createWebhookEndpoint",
        "Register a webhook endpoint; the answer shows its signing secret, once",
        201,
        NewWebhookEndpoint,
        body=CreateWebhookEndpoint,
        body_required=True,
        errors=(400, 413, 415, 422),
        description=_WEBHOOK_DESCRIPTION,
    ),
    Operation(
        "GET",
        "/v1/webhook-endpoints",
        "listWebhookEndpoints",
        "The org's webhook endpoints, newest first",
        200,
        list[WebhookEndpoint],
        params=(LIMIT, BEFORE),
        errors=(400,),
    ),
    Operation(
        "GET",
        "/v1/webhook-endpoints/{endpoint_id}",
        "getWebhookEndpoint",
        "One webhook endpoint (never its secret)",
        200,
        WebhookEndpoint,
        params=(ENDPOINT_ID,),
        errors=(404,),
    ),
    Operation(
        "DELETE",
        "/v1/webhook-endpoints/{endpoint_id}",
        "deleteWebhookEndpoint",
        "Delete a webhook endpoint; what it still had pending is not sent",
        200,
        Ok,
        params=(ENDPOINT_ID,),
        errors=(404, 409),
    ),
    Operation(
        "GET",
        "/v1/webhook-endpoints/{endpoint_id}/deliveries",
        "listWebhookDeliveries",
        "An endpoint's deliveries, newest first: status, attempts, last response, next attempt",
        200,
        list[WebhookDelivery],
        params=(ENDPOINT_ID, LIMIT, BEFORE),
        errors=(400, 404),
    ),
)


def _response_types() -> list[Any]:
    return [op.response for op in OPERATIONS if op.response is not None]


def _msgspec_types() -> list[Any]:
    """Every type the document names, for one ``schema_components`` call."""
    types: list[Any] = [Error, SseFrame]
    types += [op.body for op in OPERATIONS if op.body is not None]
    types += [t for t in _response_types() if not isinstance(t, dict)]
    return types


def _parameter(param: Param) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": param.where,
        "required": param.required,
        "description": param.description,
        "schema": param.schema,
    }


def _operation(op: Operation, schema_of: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    trace_header = {"X-Trace-Id": {"$ref": "#/components/headers/TraceId"}}
    if op.media_type == "text/event-stream":
        # Before OpenAPI 3.2 (``itemSchema``), a ``text/event-stream`` schema describes one
        # event, as parsed by an SSE client: its ``id`` and its ``data``, which is JSON.
        event = {
            "type": "object",
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": schema_of[SseFrame],
                },
            },
            "required": ["id", "data"],
        }
        content: dict[str, Any] = {"text/event-stream": {"schema": event}}
    else:
        response = op.response if isinstance(op.response, dict) else schema_of[op.response]
        content = {op.media_type: {"schema": response}}
    responses: dict[str, Any] = {
        str(op.status): {
            "description": op.summary,
            "headers": trace_header,
            "content": content,
        }
    }
    # Any request may be refused on its Content-Length (413); a body may also be late (408),
    # malformed (400) or not JSON (415).
    statuses = set(op.errors) | {413, 500}
    if op.body is not None:
        statuses |= {400, 408, 415}
    if op.auth:
        statuses |= {401, 503}
    for status in sorted(statuses):
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    result: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "parameters": [_parameter(p) for p in op.params],
        "responses": responses,
        "security": [{"bearer": []}] if op.auth else [],
    }
    if op.description:
        result["description"] = op.description
    if op.body is not None:
        result["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": schema_of[op.body]}},
        }
    return result


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once; treat it as read-only)."""
    types = _msgspec_types()
    refs, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    schema_of = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schema_of)
    error_ref = {"$ref": REF_TEMPLATE.format(name="Error")}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "runlog",
            "version": "1",
            "description": (
                "AI agent runs on an append-only, hash-chained event log. Every response carries"
                " `X-Trace-Id`; every error is `{code, message, details, trace_id}` (`Error`)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key or an access token from `POST /v1/auth/login`.",
                }
            },
            "headers": {
                "TraceId": {
                    "description": "The request's trace id (also `trace_id` in error bodies).",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
            "responses": {
                f"E{status}": {
                    "description": text,
                    "headers": {"X-Trace-Id": {"$ref": "#/components/headers/TraceId"}},
                    "content": {"application/json": {"schema": error_ref}},
                }
                for status, text in _ERRORS.items()
            },
        },
    }


@functools.cache
def document_bytes() -> bytes:
    return msgspec.json.encode(document())
