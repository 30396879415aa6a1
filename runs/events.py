"""Every event type of the domain: frozen msgspec structs, one per type, named in the past tense.

The ``type`` string stored in the log (and shown on SSE) is the struct's ``TYPE``; ``data`` is the
struct encoded as compact JSON. New fields get defaults; a changed meaning is a new event type,
never a changed field.

Streams: ``org-<id>`` (org, users, API keys), ``thread-<id>`` (thread, messages, the runs it
started), ``run-<id>`` (one run), ``webhook-<id>`` (one webhook endpoint), ``delivery-<id>`` (the
attempts of one webhook delivery).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from eventstore import NewEvent, RecordedEvent

__all__ = [
    "EVENT_TYPES",
    "RUN_STREAM_PREFIX",
    "TERMINAL_RUN_EVENTS",
    "ApiKeyCreated",
    "ApiKeyRevoked",
    "DomainEvent",
    "MessageAdded",
    "MessageDelta",
    "OrgCreated",
    "PersonaRecorded",
    "RunCancelRequested",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunInputProvided",
    "RunResumed",
    "RunRetried",
    "RunStarted",
    "RunUsage",
    "RunWaitingForInput",
    "ThreadCreated",
    "ThreadRunStarted",
    "ToolCallOutcomes",
    "ToolCalled",
    "ToolResult",
    "UserCreated",
    "UserDeleted",
    "WebhookDeliveryAttemptFailed",
    "WebhookDeliveryClaimed",
    "WebhookDeliverySucceeded",
    "WebhookEndpointCreated",
    "WebhookEndpointDeleted",
    "WebhookEndpointDisabled",
    "decode_event",
    "delivery_stream",
    "encode_event",
    "org_stream",
    "persona_stream",
    "run_id_of",
    "run_stream",
    "thread_stream",
    "webhook_stream",
]


class DomainEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=False):
    """Base of every event; subclasses set ``TYPE``."""

    TYPE: ClassVar[str] = ""


# -- org-<id> ---------------------------------------------------------------------------------


class OrgCreated(DomainEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "org.created"
    org_id: str
    name: str


class UserCreated(DomainEvent, frozen=True, kw_only=True):
    """A user of an org. ``password_hash`` is an scrypt hash (never the password)."""

    TYPE: ClassVar[str] = "user.created"
    user_id: str
    org_id: str
    name: str
    email: str
    password_hash: str | None = None


class UserDeleted(DomainEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "user.deleted"
    user_id: str


class ApiKeyCreated(DomainEvent, frozen=True, kw_only=True):
    """An API key; only the sha256 of the key is recorded, never the key."""

    TYPE: ClassVar[str] = "api_key.created"
    key_id: str
    org_id: str
    user_id: str
    key_sha256: str


class ApiKeyRevoked(DomainEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "api_key.revoked"
    key_id: str


# -- persona-<key> ----------------------------------------------------------------------------


class PersonaRecorded(DomainEvent, frozen=True, kw_only=True):
    """A persona version as first seen; versions are immutable (content hash pinned)."""

    TYPE: ClassVar[str] = "persona.recorded"
    persona_id: str
    key: str
    version: int
    content_sha256: str
    definition: dict[str, Any] = {}


# -- thread-<id> ------------------------------------------------------------------------------


class ThreadCreated(DomainEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "thread.created"
    thread_id: str
    org_id: str
    created_by_user_id: str
    title: str | None = None


class MessageAdded(DomainEvent, frozen=True, kw_only=True):
    """A message on a thread: a user's, or the assistant's answer written by a run."""

    TYPE: ClassVar[str] = "message.added"
    message_id: str
    thread_id: str
    org_id: str
    role: str
    content: str
    created_by_user_id: str | None = None
    run_id: str | None = None


class ThreadRunStarted(DomainEvent, frozen=True, kw_only=True):
    """A run took the thread (appended with ``run.started``, guarded by the thread's seq)."""

    TYPE: ClassVar[str] = "thread.run_started"
    run_id: str


# -- run-<id> ---------------------------------------------------------------------------------


class RunStarted(DomainEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "run.started"
    run_id: str
    thread_id: str
    org_id: str
    created_by_user_id: str
    trace_id: str
    route_id: str
    provider: str
    model: str
    persona_id: str | None = None
    credits_multiplier: float = 1.0
    #: The failed or cancelled run this one answers again (``POST /v1/runs/{id}/retry``).
    retry_of: str | None = None
    #: The process that started driving the run (``hostname:pid:random``), for operators.
    process: str | None = None


class MessageDelta(DomainEvent, frozen=True, kw_only=True):
    """Model output; ``call`` numbers the model call (a retry starts a new call)."""

    TYPE: ClassVar[str] = "message.delta"
    content: str
    role: str = "assistant"
    call: int = 1


class ToolCalled(DomainEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "tool.call"
    tool_call_id: str
    name: str
    arguments: dict[str, Any] = {}
    call: int = 1


class ToolResult(DomainEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "tool.result"
    tool_call_id: str
    name: str
    output: str
    is_error: bool = False


class RunWaitingForInput(DomainEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "run.waiting_for_input"
    request_id: str
    kind: str  # "question" | "confirmation"
    prompt: str
    tool_call_id: str | None = None
    tool_name: str | None = None
    arguments: dict[str, Any] | None = None


class RunInputProvided(DomainEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "run.input_provided"
    request_id: str
    content: str
    user_id: str | None = None


class RunUsage(DomainEvent, frozen=True, kw_only=True):
    """Usage and cost of one model call.

    ``estimated``: the call was cut (cancel, a dropped connection, a crash) before the provider
    reported its usage, so the figures the provider did not give are estimated (README.md,
    "Estimated usage"). A call is counted once: its provider-reported usage replaces an
    estimate of the same call, and an estimate after a reported usage is not counted.
    """

    TYPE: ClassVar[str] = "run.usage"
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    call: int = 1
    estimated: bool = False


class RunRetried(DomainEvent, frozen=True, kw_only=True):
    """A model call failed and is issued again; output of ``discarded_call`` is replaced."""

    TYPE: ClassVar[str] = "run.retried"
    call: int
    discarded_call: int
    attempt: int
    reason: str
    delay_ms: int = 0


class RunResumed(DomainEvent, frozen=True, kw_only=True):
    """A process picked the run up from its log after ``from_seq`` (after a restart, or
    taking over from a process that died or stopped)."""

    TYPE: ClassVar[str] = "run.resumed"
    from_seq: int
    reason: str = "restart"
    #: The process that drives the run from here (``hostname:pid:random``).
    process: str | None = None


class RunCancelRequested(DomainEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "run.cancel_requested"
    user_id: str | None = None


class ToolCallOutcomes(msgspec.Struct, frozen=True, kw_only=True):
    """What became of a run's tool calls, by id in call order: ``completed`` have their
    result (their side effects happened), ``interrupted`` were cut while running (a side
    effect may have happened), ``not_started`` were requested but never ran."""

    completed: list[str] = []
    interrupted: list[str] = []
    not_started: list[str] = []


class RunCancelled(DomainEvent, frozen=True, kw_only=True):
    """``tool_calls`` is the cancel receipt, kept so it can be read again from the log (None
    in runs cancelled before it was recorded)."""

    TYPE: ClassVar[str] = "run.cancelled"
    tool_calls: ToolCallOutcomes | None = None


class RunCompleted(DomainEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "run.completed"
    message_id: str | None = None


class RunFailed(DomainEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "run.failed"
    error_class: str
    message: str


# -- webhook-<endpoint id> --------------------------------------------------------------------


class WebhookEndpointCreated(DomainEvent, frozen=True, kw_only=True):
    """A webhook endpoint. Its signing secret is not recorded: ``secret_scheme`` names how it
    is derived from the service's secret key and the endpoint id (README, "Webhooks")."""

    TYPE: ClassVar[str] = "webhook.endpoint_created"
    endpoint_id: str
    org_id: str
    url: str
    events: list[str]
    created_by_user_id: str
    description: str | None = None
    secret_scheme: str = "hmac-sha256-v1"  # noqa: S105 - names the derivation


class WebhookEndpointDeleted(DomainEvent, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "webhook.endpoint_deleted"
    endpoint_id: str
    user_id: str | None = None


class WebhookEndpointDisabled(DomainEvent, frozen=True, kw_only=True):
    """The endpoint answered 410 Gone: nothing more is sent to it."""

    TYPE: ClassVar[str] = "webhook.endpoint_disabled"
    endpoint_id: str
    reason: str
    delivery_id: str | None = None
    status_code: int | None = None


# -- delivery-<delivery id> -------------------------------------------------------------------


class WebhookDeliveryClaimed(DomainEvent, frozen=True, kw_only=True):
    """A worker starts attempt ``attempt``; nobody else tries before ``claimed_until``.

    Appended guarded by the delivery stream's seq, so of several processes only one claims
    each attempt; a worker that outlives its claim cannot record a result (its append fails).
    """

    TYPE: ClassVar[str] = "webhook.delivery_claimed"
    delivery_id: str
    endpoint_id: str
    attempt: int
    worker: str
    claimed_until: str


class WebhookDeliverySucceeded(DomainEvent, frozen=True, kw_only=True):
    """The endpoint answered 2xx in time. ``signed_at`` is the ``t`` of the signature and
    ``body_sha256`` the digest of the exact bytes sent."""

    TYPE: ClassVar[str] = "webhook.delivery_succeeded"
    delivery_id: str
    attempt: int
    status_code: int
    signed_at: int
    duration_ms: int
    body_sha256: str


class WebhookDeliveryAttemptFailed(DomainEvent, frozen=True, kw_only=True):
    """An attempt that did not succeed: the next one is due at ``retry_at``, or none is
    (``gave_up``: retried for too long, or the endpoint is gone)."""

    TYPE: ClassVar[str] = "webhook.delivery_attempt_failed"
    delivery_id: str
    attempt: int
    signed_at: int
    duration_ms: int
    body_sha256: str
    status_code: int | None = None
    error: str | None = None
    retry_at: str | None = None
    gave_up: bool = False


_ALL: tuple[type[DomainEvent], ...] = (
    OrgCreated,
    UserCreated,
    UserDeleted,
    ApiKeyCreated,
    ApiKeyRevoked,
    PersonaRecorded,
    ThreadCreated,
    MessageAdded,
    ThreadRunStarted,
    RunStarted,
    MessageDelta,
    ToolCalled,
    ToolResult,
    RunWaitingForInput,
    RunInputProvided,
    RunUsage,
    RunRetried,
    RunResumed,
    RunCancelRequested,
    RunCancelled,
    RunCompleted,
    RunFailed,
    WebhookEndpointCreated,
    WebhookEndpointDeleted,
    WebhookEndpointDisabled,
    WebhookDeliveryClaimed,
    WebhookDeliverySucceeded,
    WebhookDeliveryAttemptFailed,
)

#: ``type`` string → struct class.
EVENT_TYPES: dict[str, type[DomainEvent]] = {cls.TYPE: cls for cls in _ALL}
TERMINAL_RUN_EVENTS = frozenset({RunCompleted.TYPE, RunFailed.TYPE, RunCancelled.TYPE})

_encoder = msgspec.json.Encoder()
_decoders = {name: msgspec.json.Decoder(cls) for name, cls in EVENT_TYPES.items()}


def encode_event(event: DomainEvent) -> NewEvent:
    """The event as the store appends it: its type and its compact JSON."""
    return NewEvent(event.TYPE, _encoder.encode(event))


def decode_event(recorded: RecordedEvent) -> DomainEvent:
    """The typed event of a recorded one (unknown types raise ``KeyError``)."""
    return _decoders[recorded.type].decode(recorded.data)


def org_stream(org_id: str) -> str:
    return f"org-{org_id}"


def thread_stream(thread_id: str) -> str:
    return f"thread-{thread_id}"


#: Every run's events are the stream ``run-<run id>``.
RUN_STREAM_PREFIX = "run-"


def run_stream(run_id: str) -> str:
    return f"{RUN_STREAM_PREFIX}{run_id}"


def run_id_of(stream: str) -> str:
    """The run id of a run's stream name (the inverse of :func:`run_stream`)."""
    return stream.removeprefix(RUN_STREAM_PREFIX)


def persona_stream(persona_key: str) -> str:
    return f"persona-{persona_key}"


def webhook_stream(endpoint_id: str) -> str:
    return f"webhook-{endpoint_id}"


def delivery_stream(delivery_id: str) -> str:
    return f"delivery-{delivery_id}"
