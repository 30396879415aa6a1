"""Installs are reproducible: requirements.lock pins everything pyproject.toml names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parent.parent


def _locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for text in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        line = text.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"requirements.lock: not an exact pin: {line!r}"
        pins[canonicalize_name(match.group(1))] = Version(match.group(2))
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        declared.extend(Requirement(r) for r in extra)
    return declared


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = _locked()
    problems = []
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement.name} is not in requirements.lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement.name}: locked {pins[name]} is outside {requirement}")
    assert not problems, "run scripts/lock: " + "; ".join(problems)


def test_the_install_commands_go_through_the_lock() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.DOTALL)[:2]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for text in [*commands, ci]:
        installs = re.findall(r"pip install[^&\n]*", text)
        assert installs, text
        assert all("-c requirements.lock" in line for line in installs), installs
