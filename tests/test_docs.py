"""The README documents every HTTP route (with a curl example) and every CLI command."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from runs.cli import ADMIN_COMMANDS, COMMANDS, build_parser
from runs.config import load_config
from server import create_app

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def _routes() -> set[tuple[str, str]]:
    app = create_app(load_config(None, env={}, overrides={"db": "unused.db"}))
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def test_every_route_is_documented_with_a_curl_example() -> None:
    missing = [f"{m} {p}" for m, p in sorted(_routes()) if f"`{m} {p}" not in README]
    assert not missing, f"routes not in README.md: {missing}"
    # A route's section runs from its heading line to the next route heading.
    starts = [m.start() for m in re.finditer(r"^`(?:GET|POST|PUT|PATCH|DELETE) /", README, re.M)]
    sections = [README[a:b] for a, b in zip(starts, [*starts[1:], len(README)], strict=True)]
    for method, path in _routes():
        section = next(s for s in sections if re.match(rf"`{method} {re.escape(path)}[?`]", s))
        assert "curl " in section, f"{method} {path} has no curl example"


def test_every_cli_command_is_documented() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS)
    admin = next(
        a for a in sub.choices["admin"]._actions if isinstance(a, argparse._SubParsersAction)
    )
    assert set(admin.choices) == set(ADMIN_COMMANDS)
    documented = set(re.findall(r"`runlog ([a-z-]+(?: [a-z-]+)?)", README))
    for command in COMMANDS:
        if command == "admin":
            continue
        assert any(d.split()[0] == command for d in documented), f"runlog {command} undocumented"
    for command in ADMIN_COMMANDS:
        assert f"admin {command}" in documented, f"runlog admin {command} undocumented"


def test_readme_opens_with_the_two_setup_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", README, flags=re.DOTALL)
    assert blocks[0].endswith(".venv/bin/runlog")
    assert blocks[1].endswith(".venv/bin/python -m pytest")
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert blocks[1].replace(" -q", "") in ci.replace(" -q", "")


def test_the_repository_stands_on_its_own() -> None:
    """Comments and docs point into the repository, never to notes a cloner does not have."""
    root = Path(__file__).parent.parent
    files = [
        path
        for folder in ("eventstore", "projections", "runs", "tests", "bench", "docs", "scripts")
        for path in (root / folder).rglob("*")
        if path.suffix in {".py", ".md", ""} and path.is_file()
    ] + [root / "server.py", root / "README.md", root / "pyproject.toml"]
    outside = re.compile(r"DESIGN\.md|STYLE\.md|\.\./shared|\bissue \d+|\bthe spec\b", re.I)
    this_file = Path(__file__).resolve()
    found = [
        f"{path.relative_to(root)}:{number}"
        for path in files
        if path.resolve() != this_file
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if outside.search(line)
    ]
    assert not found, found
    assert (root / "docs" / "architecture.md").is_file()
