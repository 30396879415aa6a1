"""Errors of the domain and the services around it, and the one table of their HTTP statuses.

Every public error code is decided here: :data:`ERROR_STATUS` maps each code (or, for the
codes that name a field, its family) to the status ``server.py`` answers with and
``runs/openapi.py`` documents. Only ``server.py`` turns errors into HTTP.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ERROR_FAMILIES",
    "ERROR_STATUS",
    "Conflict",
    "InvalidTransition",
    "NotFound",
    "PolicyError",
    "RateLimited",
    "RunsError",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "status_of",
]

#: Every fixed error code, with its HTTP status and what it means.
ERROR_STATUS: dict[str, tuple[int, str]] = {
    "validation.error": (400, "the input is invalid"),
    "validation.body": (400, "the body does not match the request's schema"),
    "validation.json": (400, "the body is not well-formed JSON or not UTF-8"),
    "validation.unknown_field": (400, "the body has a field the request does not define"),
    "validation.user_exists": (400, "a live user already has that name or email"),
    "validation.method_not_allowed": (405, "the resource does not allow this method"),
    "validation.body_timeout": (408, "the body was not received within the read timeout"),
    "validation.body_too_large": (413, "the body is larger than `max_body_bytes`"),
    "validation.content_too_large": (413, "the input is larger than 32 KB of UTF-8"),
    "validation.content_type": (415, "the body must be `application/json`"),
    "validation.persona_not_found": (422, "no such persona (or persona version)"),
    "auth.unauthorized": (401, "no valid Bearer token (API key or access token)"),
    "auth.rate_limited": (429, "too many failed logins; `details.retry_after_seconds`"),
    "not_found": (404, "no such resource in the caller's org (another org's is the same)"),
    "runs.conflict": (409, "the run or thread does not allow this now"),
    "runs.thread_busy": (409, "the thread already has a live run"),
    "runs.invalid_transition": (409, "the run's status does not allow this command"),
    "runs.not_waiting_for_input": (409, "the run is not waiting for input"),
    "runs.not_retryable": (409, "only a failed or cancelled run can be retried"),
    "runs.not_latest": (409, "the run is no longer the thread's latest turn"),
    "runs.limit_exceeded": (429, "the org has `max_live_runs_per_org` live runs"),
    "policy.error": (422, "the request is refused by policy"),
    "policy.route_not_found": (422, "no such route"),
    "policy.route_unavailable": (422, "the route's API key variable is not set"),
    "policy.webhook_endpoint_limit": (
        422,
        "the org has `webhooks_max_endpoints_per_org` webhook endpoints",
    ),
    "policy.webhook_private_target": (
        422,
        "the webhook URL's host is a loopback or private address (`webhooks_allow_private`)",
    ),
    "internal.error": (500, "an unexpected error (logged with the trace id)"),
    "internal.config": (500, "the configuration is invalid"),
    "internal.unavailable": (503, "the service is stopping or cannot write to its log"),
    "internal.storage": (500, "a run's log stayed unwritable for `storage_retry_seconds`"),
}

#: Codes made of a prefix and a field name (``validation.content``): the status of each
#: family.
ERROR_FAMILIES: dict[str, tuple[int, str]] = {
    "validation.": (400, "`validation.<field>`: that field is invalid (`details.field`)"),
}


def status_of(code: str) -> int:
    """The HTTP status of ``code``: from the table, else its family, else 500."""
    fixed = ERROR_STATUS.get(code)
    if fixed is not None:
        return fixed[0]
    for prefix, (status, _) in ERROR_FAMILIES.items():
        if code.startswith(prefix):
            return status
    return 500


class RunsError(Exception):
    """Root of every error of the ``runs`` package; carries the public error code."""

    code = "internal.error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    @property
    def status(self) -> int:
        return status_of(self.code)


class ValidationFailed(RunsError):
    """Bad input; ``code`` names the field, e.g. ``validation.content``."""

    code = "validation.error"


class Unauthorized(RunsError):
    code = "auth.unauthorized"


class NotFound(RunsError):
    """Missing — or belonging to another org, which must look exactly the same."""

    code = "not_found"


class Conflict(RunsError):
    code = "runs.conflict"


class InvalidTransition(Conflict):
    """A command that the run's current status does not allow."""


class PolicyError(RunsError):
    code = "policy.error"


class RateLimited(RunsError):
    code = "runs.limit_exceeded"


class Unavailable(RunsError):
    """The service cannot take the request now (stopping, or its log refuses writes)."""

    code = "internal.unavailable"
