"""Every error code the code can raise has one status, and OpenAPI documents that status."""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec

from runs.errors import ERROR_FAMILIES, ERROR_STATUS, status_of
from runs.openapi import document_bytes
from tests.conftest import Api

ROOT = Path(__file__).parent.parent.parent
SOURCES = [ROOT / "server.py", *sorted((ROOT / "runs").rglob("*.py"))]


def _codes_in_source() -> tuple[set[str], set[str]]:
    """String codes written in the source (``code="..."`` arguments, ``code = "..."`` class
    attributes, the code argument of ``error_response``), and the f-string prefixes of codes
    built from a field name."""
    fixed: set[str] = set()
    prefixes: set[str] = set()

    def collect(node: ast.AST | None) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            fixed.add(node.value)
        elif isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                prefixes.add(first.value)
        elif isinstance(node, ast.IfExp):
            collect(node.body)
            collect(node.orelse)

    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "code":
                        collect(keyword.value)
                name = node.func.id if isinstance(node.func, ast.Name) else None
                if name == "error_response" and len(node.args) >= 2:
                    collect(node.args[1])
            elif isinstance(node, ast.ClassDef):
                for statement in node.body:
                    if isinstance(statement, ast.Assign) and [
                        getattr(t, "id", None) for t in statement.targets
                    ] == ["code"]:
                        collect(statement.value)
    return fixed, prefixes


def test_the_source_raises_codes_and_families_that_the_table_knows() -> None:
    fixed, prefixes = _codes_in_source()
    assert {"internal.unavailable", "runs.thread_busy", "validation.content"} <= fixed
    unknown = sorted(c for c in fixed if c not in ERROR_STATUS and not c.startswith("validation."))
    assert not unknown, f"codes raised but missing from runs.errors.ERROR_STATUS: {unknown}"
    assert prefixes <= set(ERROR_FAMILIES), prefixes


def test_openapi_lists_each_code_under_its_status() -> None:
    document = msgspec.json.decode(document_bytes())
    responses = document["components"]["responses"]
    fixed, _ = _codes_in_source()
    for code in sorted(fixed | set(ERROR_STATUS)):
        status = status_of(code)
        description = responses[f"E{status}"]["description"]
        if code in ERROR_STATUS:
            assert f"`{code}`" in description, (code, status)
        else:
            assert "`validation.<field>`" in description, (code, status)


def test_fixed_statuses_of_the_published_contract() -> None:
    # The README and OpenAPI promise these; the literal numbers are the contract.
    expected = {
        "internal.unavailable": 503,
        "internal.error": 500,
        "validation.content_too_large": 413,
        "validation.body_too_large": 413,
        "validation.content_type": 415,
        "validation.body_timeout": 408,
        "validation.persona_not_found": 422,
        "runs.thread_busy": 409,
        "runs.limit_exceeded": 429,
        "auth.rate_limited": 429,
        "auth.unauthorized": 401,
        "not_found": 404,
        "validation.title": 400,
    }
    assert {code: status_of(code) for code in expected} == expected


async def test_a_run_refused_while_stopping_is_503_internal_unavailable(api: Api) -> None:
    thread_id = await api.create_thread()
    await api.add_message(thread_id, "hello")
    api.runtime.supervisor.accepting = False
    status, body = await api.request("POST", f"/v1/threads/{thread_id}/runs", json={})
    assert (status, body["code"]) == (503, "internal.unavailable")
