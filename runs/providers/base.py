"""The model port: what the agent loop needs from a model provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec

__all__ = [
    "ModelRequest",
    "Provider",
    "ProviderError",
    "ProviderEvent",
    "Stop",
    "TextDelta",
    "ToolSpec",
    "ToolUse",
    "Usage",
]


class ToolSpec(msgspec.Struct, frozen=True):
    name: str
    description: str
    input_schema: dict[str, Any]


class ModelRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One model call. ``messages`` use the Messages API shape (role + content blocks)."""

    model: str
    system: str
    messages: list[dict[str, Any]]
    tools: list[ToolSpec] = []
    max_tokens: int = 4096
    temperature: float | None = None


class TextDelta(msgspec.Struct, frozen=True):
    text: str


class ToolUse(msgspec.Struct, frozen=True):
    id: str
    name: str
    input: dict[str, Any]


class Usage(msgspec.Struct, frozen=True):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0


class Stop(msgspec.Struct, frozen=True):
    reason: str  # "end_turn" | "tool_use" | "max_tokens" | ...


ProviderEvent = TextDelta | ToolUse | Usage | Stop


class ProviderError(Exception):
    """A model call failed. ``retryable`` errors (429, 529, 5xx, dropped connections) may be
    issued again; others end the run with ``error_class``."""

    def __init__(
        self,
        error_class: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.retryable = retryable
        #: The provider's own ``retry-after``, honoured (capped) when it is longer than ours.
        self.retry_after_s = retry_after_s


class Provider(Protocol):
    def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        """Stream one model call: text deltas, tool uses, then usage and a stop reason.

        Cancelling the consumer must abort the underlying request.
        """
        ...
