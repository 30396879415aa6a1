"""Reading requests: JSON bodies into the API's msgspec types, path ids and query parameters.

Everything here raises the domain's errors (``validation.*`` naming the field, ``not_found``);
``server.py`` turns them into responses.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from runs.errors import NotFound, ValidationFailed
from runs.ids import is_id

__all__ = ["path_id", "query_before", "query_limit", "query_seq", "read_body"]

T = TypeVar("T")
_LIMIT = re.compile(r"^[0-9]{1,4}$")
_SEQ = re.compile(r"^[0-9]{1,15}$")


def _field_of(message: str) -> str | None:
    """The field a msgspec validation message points at (``- at `$.content```)."""
    match = re.search(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)", message)
    if match:
        return match.group(1)
    match = re.search(r"required field `([A-Za-z_][A-Za-z0-9_]*)`", message)
    if match:
        return match.group(1)
    match = re.search(r"unknown field `([^`]{1,100})`", message)
    return match.group(1) if match else None


async def read_body(request: web.Request, kind: type[T], timeout_s: float) -> T:
    """Decode a JSON body into ``kind`` or raise ``validation.*`` naming the field; a body
    not received within ``timeout_s`` seconds is refused (slow clients, issue 7)."""
    if request.body_exists:
        content_type = request.content_type
        if content_type != "application/json":
            raise ValidationFailed(
                f"the body must be application/json, not {content_type or 'untyped'}",
                code="validation.content_type",
            )
        try:
            async with asyncio.timeout(timeout_s):
                raw = await request.read()
        except TimeoutError:
            raise ValidationFailed(
                f"the body was not received within {timeout_s:g} s", code="validation.body_timeout"
            ) from None
    else:
        raw = b""
    if not raw.strip():
        raw = b"{}"
    try:
        decoded = msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        field = _field_of(str(exc))
        raise ValidationFailed(
            str(exc),
            code=f"validation.{field}" if field else "validation.body",
            **({"field": field} if field else {}),
        ) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec checks UTF-8 inside strings as it goes, and raises UnicodeDecodeError.
        bad_utf8 = isinstance(exc, UnicodeDecodeError)
        field = _malformed_field(raw, kind, bad_utf8)
        reason = "not valid UTF-8" if bad_utf8 else f"not valid JSON: {exc}"
        raise ValidationFailed(
            f"the body is {reason}",
            code=f"validation.{field}" if field else "validation.json",
            **({"field": field} if field else {}),
        ) from None
    for name in getattr(kind, "__struct_fields__", ()):
        value = getattr(decoded, name)
        if isinstance(value, str) and "\x00" in value:
            raise ValidationFailed(
                f"{name} must not contain NUL characters", code=f"validation.{name}", field=name
            )
    return decoded


def _malformed_field(raw: bytes, kind: type[Any], bad_utf8: bool) -> str | None:
    """Which top-level field of a malformed body is to blame, found with a lenient parse
    (invalid UTF-8 replaced, NaN/Infinity and raw control characters accepted); ``None`` when
    the JSON's structure itself is broken (issue 7: errors name the field)."""
    try:
        value = json.loads(raw.decode("utf-8", "replace"), strict=False)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    fields = getattr(kind, "__struct_fields__", ())
    candidates = [(name, item) for name, item in value.items() if name in fields]
    tests: list[Callable[[Any], bool]] = (
        [lambda leaf: isinstance(leaf, str) and "\ufffd" in leaf]
        if bad_utf8
        else [
            lambda leaf: isinstance(leaf, float) and not math.isfinite(leaf),
            lambda leaf: isinstance(leaf, str) and any("\ud800" <= c <= "\udfff" for c in leaf),
            lambda leaf: isinstance(leaf, str) and any(c < " " for c in leaf),
        ]
    )
    for test in tests:
        for name, item in candidates:
            if any(test(leaf) for leaf in _leaves(item)):
                return str(name)
    return None


def _leaves(value: Any) -> list[Any]:
    """The scalars and keys inside a decoded JSON value (iterative: it may be deep)."""
    leaves: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            leaves.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            leaves.append(item)
    return leaves


def path_id(request: web.Request, name: str) -> str:
    """A well-formed id from the path; anything else cannot exist, so it is a 404."""
    value = request.match_info[name]
    if not is_id(value):
        raise NotFound(f"{name.removesuffix('_id')} not found")
    return value


def query_limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return 50
    if not _LIMIT.match(raw) or not 1 <= int(raw) <= 200:
        raise ValidationFailed(
            "limit must be an integer from 1 to 200", code="validation.limit", field="limit"
        )
    return int(raw)


def query_before(request: web.Request) -> str | None:
    raw = request.query.get("before")
    if raw is None:
        return None
    if not is_id(raw):
        raise ValidationFailed(
            "before must be the id of the last item of the previous page",
            code="validation.before",
            field="before",
        )
    return raw


def query_seq(request: web.Request, name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    if not _SEQ.match(raw.strip()):
        raise ValidationFailed(
            f"{name} must be a non-negative integer", code=f"validation.{name}", field=name
        )
    return int(raw.strip())
