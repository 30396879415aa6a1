"""The Anthropic provider, through the official ``anthropic`` SDK (streaming Messages API).

The SDK's own retries are off: the agent loop retries, so that every retry is an event in the
run's log with its reason. Prompt caching marks the system prompt and the tool definitions.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
from httpx2 import TransportError  # the HTTP library under the SDK since anthropic 2.0

from runs.config import Route
from runs.providers.base import (
    ModelRequest,
    ProviderError,
    ProviderEvent,
    Stop,
    TextDelta,
    ToolUse,
    Usage,
)

__all__ = ["AnthropicProvider", "classify"]

_RETRYABLE_TYPES = frozenset({"rate_limit_error", "overloaded_error", "api_error"})

# SDK 2.x speaks API version 2026-10-21, which removed the sampling parameters: its
# ``messages.create`` has no ``temperature`` and the API answers 400 to one sent anyway. The
# persona's temperature is sent only through an SDK (API version) that still accepts it.
_SENDS_TEMPERATURE = (
    "temperature" in inspect.signature(anthropic.resources.messages.AsyncMessages.create).parameters
)


def _retry_after(exc: anthropic.APIStatusError) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except (ValueError, TypeError, AttributeError):
        return None


def classify(exc: Exception) -> ProviderError:
    """Map an SDK error to the run's error class; 429, 529, 5xx and dropped connections are
    retryable. The message is the provider's, which never contains our key."""
    if isinstance(exc, anthropic.APIStatusError):
        kind = getattr(exc, "type", None) or ""
        message = getattr(exc, "api_message", None) or str(exc)
        status = exc.status_code
        retryable = status in (408, 429, 529) or status >= 500 or kind in _RETRYABLE_TYPES
        if status == 401 or kind == "authentication_error":
            error_class = "provider.auth"
        elif status == 429 or kind == "rate_limit_error":
            error_class = "provider.rate_limited"
        elif status == 529 or kind == "overloaded_error":
            error_class = "provider.overloaded"
        elif status >= 500 or kind == "api_error":
            error_class = "provider.server_error"
        elif status == 400 or kind == "invalid_request_error":
            error_class = "provider.bad_request"
        else:
            error_class = f"provider.http_{status}"
        return ProviderError(
            error_class, message, retryable=retryable, retry_after_s=_retry_after(exc)
        )
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderError("provider.connection", str(exc) or "connection failed", retryable=True)
    return ProviderError("provider.error", f"{type(exc).__name__}: {exc}")


class AnthropicProvider:
    def __init__(self, route: Route, api_key: str | None) -> None:
        self.route = route
        self.client = anthropic.AsyncAnthropic(
            api_key=api_key or "",
            base_url=route.base_url,
            max_retries=0,
            timeout=route.timeout_s,
        )

    async def aclose(self) -> None:
        """Close the HTTP client (its connection pool)."""
        await self.client.close()

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        tools = [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema}
            for t in request.tools
        ]
        if tools:
            tools[-1]["cache_control"] = {"type": "ephemeral"}
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "system": [
                {"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}
            ],
            "messages": request.messages or [{"role": "user", "content": "(empty thread)"}],
        }
        if tools:
            params["tools"] = tools
        if request.temperature is not None and _SENDS_TEMPERATURE:
            params["temperature"] = request.temperature
        return params

    async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        blocks: dict[int, dict[str, Any]] = {}
        try:
            stream = await self.client.messages.create(**self._params(request), stream=True)
            async with stream:
                async for event in stream:
                    kind = event.type
                    if kind == "message_start":
                        usage = event.message.usage
                        yield Usage(
                            input_tokens=usage.input_tokens or 0,
                            output_tokens=usage.output_tokens or 0,
                            cache_write_tokens=usage.cache_creation_input_tokens or 0,
                            cache_read_tokens=usage.cache_read_input_tokens or 0,
                        )
                    elif kind == "content_block_start":
                        block = event.content_block
                        if block.type == "tool_use":
                            blocks[event.index] = {"id": block.id, "name": block.name, "json": ""}
                    elif kind == "content_block_delta":
                        delta = event.delta
                        if delta.type == "text_delta":
                            yield TextDelta(delta.text)
                        elif delta.type == "input_json_delta" and event.index in blocks:
                            blocks[event.index]["json"] += delta.partial_json
                    elif kind == "content_block_stop" and event.index in blocks:
                        block = blocks.pop(event.index)
                        try:
                            arguments = json.loads(block["json"]) if block["json"] else {}
                        except json.JSONDecodeError:
                            arguments = {"_raw": block["json"]}
                        yield ToolUse(block["id"], block["name"], arguments)
                    elif kind == "message_delta":
                        usage = event.usage
                        yield Usage(
                            input_tokens=getattr(usage, "input_tokens", None) or 0,
                            output_tokens=usage.output_tokens or 0,
                            cache_write_tokens=getattr(usage, "cache_creation_input_tokens", None)
                            or 0,
                            cache_read_tokens=getattr(usage, "cache_read_input_tokens", None) or 0,
                        )
                        if event.delta.stop_reason:
                            yield Stop(event.delta.stop_reason)
        except anthropic.AnthropicError as exc:
            raise classify(exc) from exc
        except TransportError as exc:
            # A connection dropped mid-stream: the SDK wraps errors of sending the request,
            # not those of reading the streamed body.
            raise ProviderError(
                "provider.connection", f"connection lost: {exc}", retryable=True
            ) from exc
