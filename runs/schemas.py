"""Request and response bodies of the HTTP API, as msgspec types.

The handlers decode and encode with these, and the OpenAPI document is generated from them,
so the contract cannot drift from the code.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

__all__ = [
    "MAX_INPUT_BYTES",
    "CancelReceipt",
    "CreateMessage",
    "CreateRun",
    "CreateThread",
    "CreateWebhookEndpoint",
    "Error",
    "Login",
    "LoginResult",
    "Message",
    "NewWebhookEndpoint",
    "Ok",
    "Run",
    "RunCreated",
    "RunDetail",
    "SseFrame",
    "SubmitInput",
    "Thread",
    "ThreadRun",
    "ToolCallsReceipt",
    "ToolInfo",
    "UsageReport",
    "UsageRow",
    "WebhookDelivery",
    "WebhookEndpoint",
]

#: ``POST /v1/runs/{id}/input`` accepts at most 32 KB of UTF-8 (the Runs API: "maximum 32KB").
MAX_INPUT_BYTES = 32 * 1024
MAX_MESSAGE_CHARS = 256 * 1024

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Request bodies refuse unknown fields: a typo is an error, not a silent default."""


class CreateThread(Request):
    title: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class CreateMessage(Request):
    content: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MESSAGE_CHARS)]


class CreateRun(Request):
    route_id: Id | None = None
    # The Runs API: persona_id "defaults if empty" — an empty string means the default persona.
    persona_id: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class SubmitInput(Request):
    content: str


class Login(Request):
    login: Annotated[str, msgspec.Meta(min_length=1, max_length=320)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class Error(msgspec.Struct):
    code: str
    message: str
    details: dict[str, Any]
    trace_id: str


class Ok(msgspec.Struct):
    ok: bool = True


class ToolCallsReceipt(msgspec.Struct):
    """A run's tool call ids by outcome, in call order."""

    completed: list[str]  # finished: the result is in the log (side effects happened)
    interrupted: list[str]  # cut while running: a side effect may have happened
    not_started: list[str]  # requested, never run


class CancelReceipt(msgspec.Struct, kw_only=True):
    """``POST /v1/runs/{id}:cancel``: the documented ``{ok: true}`` and how the run ended. For a
    run that had already ended, the same receipt for how it ended."""

    ok: bool = True
    status: str
    last_seq: int
    tool_calls: ToolCallsReceipt


class LoginResult(msgspec.Struct):
    access_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the scheme name


class Thread(msgspec.Struct):
    id: str
    org_id: str
    created_by_user_id: str
    title: str | None
    created_at: str
    active_run_id: str | None


class Message(msgspec.Struct):
    id: str
    org_id: str
    thread_id: str
    created_by_user_id: str | None
    role: str
    content: str
    created_at: str
    run_id: str | None = None


class RunCreated(msgspec.Struct):
    run_id: str
    trace_id: str


class ThreadRun(msgspec.Struct):
    run_id: str
    status: str
    created_at: str


class Run(msgspec.Struct):
    """An item of ``GET /v1/runs``: every field of the Runs API's example, plus cancelled_at."""

    run_id: str
    org_id: str
    thread_id: str
    status: str
    model: str
    persona_id: str | None
    total_input_tokens: int
    total_output_tokens: int
    total_cost_usd: float
    duration_ms: int | None
    cache_hit_rate: float | None
    credits_used: int
    created_at: str
    completed_at: str | None
    failed_at: str | None
    cancelled_at: str | None
    created_by_user_id: str
    created_by_user_name: str | None
    created_by_email: str | None


class RunDetail(Run):
    """``GET /v1/runs/{id}``: the Runs API's detail shape plus the list fields."""

    trace_id: str
    route_id: str
    error_class: str | None = None
    error_message: str | None = None
    as_of_seq: int | None = None
    #: The totals include usage estimated for a model call cut before its end.
    usage_estimated: bool = False
    #: The run this one retried (``POST /v1/runs/{id}/retry``).
    retry_of: str | None = None


class SseFrame(msgspec.Struct):
    """The JSON in each SSE ``data:`` line (exactly these four keys)."""

    seq: int
    type: str
    data: msgspec.Raw
    created_at: str


class ToolInfo(msgspec.Struct):
    """An item of ``GET /v1/tools``: a tool a persona may use, and where it comes from."""

    name: str
    description: str
    input_schema: dict[str, Any]
    #: "builtin", "module" (the config's ``tool_modules``) or "mcp".
    source: str
    #: For an MCP tool, the ``[[mcp_servers]]`` name that serves it.
    mcp_server: str | None
    requires_confirmation: bool
    safe_to_repeat: bool


class UsageRow(msgspec.Struct):
    """One group of ``GET /v1/usage``: runs started, and what model calls used, in the period."""

    key: str
    runs: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float
    credits_used: int


class UsageReport(msgspec.Struct):
    """``GET /v1/usage``: the caller's org, from and to (UTC days, inclusive), rows by key."""

    from_: str = msgspec.field(name="from")
    to: str
    group_by: str
    rows: list[UsageRow]


# -- webhooks ---------------------------------------------------------------------------------


class CreateWebhookEndpoint(Request):
    """``events`` defaults to every run outcome; ``url`` is http(s), to a public host unless
    ``webhooks_allow_private``."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    events: Annotated[list[str], msgspec.Meta(min_length=1, max_length=10)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class WebhookEndpoint(msgspec.Struct):
    id: str
    url: str
    events: list[str]
    description: str | None
    #: "active", or "disabled" once it answered 410 Gone.
    status: str
    created_at: str
    disabled_at: str | None
    disabled_reason: str | None


class NewWebhookEndpoint(WebhookEndpoint):
    """The created endpoint with its signing secret: the only response that shows it."""

    secret: str


class WebhookDelivery(msgspec.Struct):
    """One run event sent (or to be sent) to one endpoint; ``id`` is its ``Runlog-Delivery``."""

    id: str
    endpoint_id: str
    type: str
    run_id: str
    thread_id: str
    seq: int
    #: "pending", "succeeded", "failed" (gave up) or "cancelled" (the endpoint went away).
    status: str
    attempts: int
    last_response_code: int | None
    last_error: str | None
    last_attempt_at: str | None
    #: When the next attempt is due (while pending).
    next_attempt_at: str | None
    created_at: str
