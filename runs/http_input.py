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
from typing import Any, NoReturn, TypeVar

import msgspec
from aiohttp import web

from runs.errors import NotFound, ValidationFailed
from runs.ids import is_id

__all__ = ["decode_body", "path_id", "query_before", "query_limit", "query_seq", "read_body"]

T = TypeVar("T")
_LIMIT = re.compile(r"^[0-9]{1,4}$")
_SEQ = re.compile(r"^[0-9]{1,15}$")


async def read_body(request: web.Request, kind: type[T], timeout_s: float) -> T:
    """Decode a JSON body into ``kind`` or raise ``validation.*`` naming the field; a body
    not received within ``timeout_s`` seconds is refused (slow clients)."""
    if request.body_exists:
        content_type = request.content_type
        if content_type != "application/json":
            raise ValidationFailed(
                f"the body must be application/json, not {content_type or 'untyped'}",
                code="validation.content_type",
            )
        if request.content.is_eof():
            raw = await request.read()  # all here already (a small body): no timer
        else:
            try:
                async with asyncio.timeout(timeout_s):
                    raw = await request.read()
            except TimeoutError:
                raise ValidationFailed(
                    f"the body was not received within {timeout_s:g} s",
                    code="validation.body_timeout",
                ) from None
    else:
        raw = b""
    if not raw.strip():
        raw = b"{}"
    return decode_body(raw, kind)


def decode_body(raw: bytes, kind: type[T]) -> T:
    """``raw`` as ``kind``, or :class:`ValidationFailed` naming the field to blame.

    Which field is at fault is found by our own checks (UTF-8 first, then one probe per field
    of the schema), never by reading a library's error text, so the answer does not change
    when msgspec rewords a message or changes which exception it raises for what.
    """
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        _fail("the body is not valid UTF-8", _field_with_bad_utf8(raw, kind), "validation.json")
    try:
        decoded = msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        _blame_schema(raw, kind, str(exc))
    except msgspec.DecodeError as exc:
        _fail(f"the body is not valid JSON: {exc}", _malformed_field(raw, kind), "validation.json")
    for name in _fields(kind):
        value = getattr(decoded, name)
        if isinstance(value, str) and "\x00" in value:
            _fail(f"{name} must not contain NUL characters", name, "validation.body")
    return decoded


def _fail(message: str, field: str | None, fallback_code: str) -> NoReturn:
    if field is None:
        raise ValidationFailed(message, code=fallback_code)
    raise ValidationFailed(message, code=f"validation.{field}", field=field)


def _fields(kind: type[Any]) -> tuple[str, ...]:
    return tuple(getattr(kind, "__struct_fields__", ()))


_PROBES: dict[type[Any], tuple[tuple[str, type[Any]], ...]] = {}


def _probes(kind: type[Any]) -> tuple[tuple[str, type[Any]], ...]:
    """One struct per field of ``kind`` holding only that field (optional, same type) and
    ignoring every other key: decoding the body with it checks that one field alone."""
    cached = _PROBES.get(kind)
    if cached is not None:
        return cached
    probes = []
    for info in msgspec.structs.fields(kind):
        probe = msgspec.defstruct(
            f"{kind.__name__}Probe_{info.name}",
            [(info.name, info.type | msgspec.UnsetType, msgspec.UNSET)],
            rename={info.name: info.encode_name},
        )
        probes.append((info.name, probe))
    _PROBES[kind] = tuple(probes)
    return _PROBES[kind]


def _blame_schema(raw: bytes, kind: type[Any], message: str) -> NoReturn:
    """The body is well-formed JSON that ``kind`` refuses: find the field."""
    for name, probe in _probes(kind):
        try:
            msgspec.json.decode(raw, type=probe)
        except msgspec.ValidationError as exc:
            _fail(f"{name}: {exc}", name, "validation.body")
        except (msgspec.DecodeError, RecursionError):
            # Another key's value is too deep to skip: this probe cannot tell.
            continue
    try:
        keys = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
    except (msgspec.DecodeError, RecursionError):
        _fail(
            f"the body must be a JSON object matching the schema: {message}",
            None,
            "validation.body",
        )
    infos = msgspec.structs.fields(kind)
    known = {info.encode_name for info in infos}
    unknown = sorted(name for name in keys if name not in known)
    if unknown:
        raise ValidationFailed(
            f"unknown field {unknown[0]!r}", code="validation.unknown_field", field=unknown[0]
        )
    for info in infos:
        if info.required and info.encode_name not in keys:
            _fail(f"{info.name} is required", info.name, "validation.body")
    _fail(f"the body does not match the schema: {message}", None, "validation.body")


def _field_with_bad_utf8(raw: bytes, kind: type[Any]) -> str | None:
    """The top-level field whose value holds the invalid UTF-8 (each bad byte decodes to a
    lone surrogate under ``surrogateescape``, which no valid UTF-8 decodes to)."""
    value = _lenient_json(raw.decode("utf-8", "surrogateescape"))
    if not isinstance(value, dict):
        return None
    for name in _fields(kind):
        if name in value and any(
            isinstance(leaf, str) and any("\udc80" <= c <= "\udcff" for c in leaf)
            for leaf in _leaves(value[name])
        ):
            return name
    return None


def _lenient_json(text: str) -> Any:
    try:
        return json.loads(text, strict=False)
    except (ValueError, RecursionError):
        return None


def _malformed_field(raw: bytes, kind: type[Any]) -> str | None:
    """Which top-level field of a malformed body is to blame, found with a lenient parse
    (NaN/Infinity and raw control characters accepted); ``None`` when the JSON's structure
    itself is broken."""
    value = _lenient_json(raw.decode("utf-8"))
    if not isinstance(value, dict):
        return None
    candidates = [(name, value[name]) for name in _fields(kind) if name in value]
    tests: list[Callable[[Any], bool]] = [
        lambda leaf: isinstance(leaf, float) and not math.isfinite(leaf),
        lambda leaf: isinstance(leaf, str) and any("\ud800" <= c <= "\udfff" for c in leaf),
        lambda leaf: isinstance(leaf, str) and any(c < " " for c in leaf),
    ]
    for test in tests:
        for name, item in candidates:
            if any(test(leaf) for leaf in _leaves(item)):
                return name
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


def query_seq(name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    if not _SEQ.match(raw.strip()):
        raise ValidationFailed(
            f"{name} must be a non-negative integer", code=f"validation.{name}", field=name
        )
    return int(raw.strip())
