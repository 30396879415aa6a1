"""Errors of the domain and the services around it. Only ``server.py`` turns them into HTTP."""

from __future__ import annotations

from typing import Any

__all__ = [
    "Conflict",
    "InvalidTransition",
    "NotFound",
    "PolicyError",
    "RateLimited",
    "RunsError",
    "Unauthorized",
    "ValidationFailed",
]


class RunsError(Exception):
    """Root of every error of the ``runs`` package; carries the public error code."""

    code = "internal.error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


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
