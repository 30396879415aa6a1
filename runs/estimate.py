"""Token estimates for a model call cut before the provider reported its usage.

The ``anthropic`` SDK counts tokens only through the API (``messages.count_tokens`` is a
request), which is no use offline or for a provider that is gone, so the estimate is a stated
heuristic: one token per four bytes of UTF-8, rounded up. For English text and JSON that is
close to what Anthropic's tokenizer gives; for other scripts it under- or over-counts, and the
usage event says ``estimated: true`` either way (README.md, "Estimated usage").
"""

from __future__ import annotations

import math

import msgspec

from runs.providers.base import ModelRequest

__all__ = ["BYTES_PER_TOKEN", "estimate_request_tokens", "estimate_tokens"]

BYTES_PER_TOKEN = 4

_json = msgspec.json.Encoder()


def estimate_tokens(text: str) -> int:
    """Tokens of ``text``: its UTF-8 bytes / 4, rounded up."""
    return math.ceil(len(text.encode("utf-8", "surrogatepass")) / BYTES_PER_TOKEN)


def _bytes_of(value: object) -> int:
    return len(_json.encode(value))


def estimate_request_tokens(request: ModelRequest) -> int:
    """Input tokens of the request as sent: system prompt, messages and tool definitions, each
    counted as the compact JSON the provider receives (bytes / 4, rounded up)."""
    size = len(request.system.encode("utf-8", "surrogatepass"))
    size += _bytes_of(request.messages)
    size += _bytes_of(request.tools) if request.tools else 0
    return math.ceil(size / BYTES_PER_TOKEN)
