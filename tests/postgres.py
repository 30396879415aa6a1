"""A fresh PostgreSQL database per test session, and a fresh schema per store under test.

The server is the one every machine of this project runs (127.0.0.1:5432, user ``postgres``,
trust authentication); ``RUNLOG_TEST_PG_URL`` points elsewhere. Under ``CI=true`` an
unreachable server fails the run with a clear message; elsewhere the PostgreSQL tests are
skipped, saying why.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest

ADMIN_URL = os.environ.get("RUNLOG_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


def with_schema(url: str, schema: str) -> str:
    """``url`` with every connection's ``search_path`` set to ``schema``."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}')}"


def session_database() -> Iterator[str]:
    """Create a uniquely named database, yield its URL, drop it afterwards."""
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        message = (
            f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}). Every machine of this"
            " project runs PostgreSQL 15 on 127.0.0.1:5432; start it, or set"
            " RUNLOG_TEST_PG_URL to a server where user may create databases."
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    name = f"runlog_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _with_database(ADMIN_URL, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_schema(database_url: str, schema: str | None = None) -> str:
    """Create ``schema`` (default: a new unique one) and return a URL that uses it."""
    schema = schema or f"s_{secrets.token_hex(6)}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    return with_schema(database_url, schema)
