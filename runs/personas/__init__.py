"""Versioned, immutable personas (``key@version``), loaded from TOML files."""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from runs.config import ConfigError
from runs.errors import ValidationFailed

#: The persona of a run that names none.
DEFAULT_PERSONA_ID = "default@1"

__all__ = ["DEFAULT_PERSONA_ID", "Persona", "PersonaRegistry", "load_persona_files"]

BUILTIN_DIR = Path(__file__).parent
_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class Persona(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    key: str
    version: int
    system_prompt: str
    tools: list[str] = []
    confirm_tools: list[str] = []
    max_iterations: int = 10
    max_output_tokens: int = 4096
    temperature: float = 1.0
    max_cost_usd: float | None = None

    @property
    def persona_id(self) -> str:
        return f"{self.key}@{self.version}"

    def content_sha256(self) -> str:
        """Hash of the definition (not of the file's bytes: comments do not matter)."""
        return hashlib.sha256(msgspec.json.encode(self, order="sorted")).hexdigest()

    def definition(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


def load_persona_files(paths: Iterable[Path]) -> list[Persona]:
    personas = []
    for path in sorted(paths):
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
            persona = msgspec.convert(raw, Persona)
        except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
            raise ConfigError(f"persona file {path}: {exc}") from exc
        if not _KEY.match(persona.key) or persona.version < 1:
            raise ConfigError(
                f"persona file {path}: key must match {_KEY.pattern} and version be >= 1"
            )
        if persona.max_iterations < 1 or persona.max_output_tokens < 1:
            raise ConfigError(f"persona file {path}: budgets must be positive")
        personas.append(persona)
    return personas


class PersonaRegistry:
    """All known persona versions; resolves ``key@version``, bare ``key`` (latest) and empty."""

    def __init__(self, personas: Iterable[Persona]) -> None:
        self.by_id: dict[str, Persona] = {}
        for persona in personas:
            if persona.persona_id in self.by_id:
                raise ConfigError(f"persona {persona.persona_id} is defined twice")
            self.by_id[persona.persona_id] = persona
        self.latest: dict[str, Persona] = {}
        for persona in self.by_id.values():
            current = self.latest.get(persona.key)
            if current is None or persona.version > current.version:
                self.latest[persona.key] = persona

    @classmethod
    def from_dirs(cls, extra_dir: str | None) -> PersonaRegistry:
        files = list(BUILTIN_DIR.glob("*.toml"))
        if extra_dir:
            directory = Path(extra_dir)
            if not directory.is_dir():
                raise ConfigError(f"personas_dir {extra_dir} is not a directory")
            files += list(directory.glob("*.toml"))
        return cls(load_persona_files(files))

    def resolve(self, persona_id: str | None) -> Persona:
        if not persona_id:
            return self.by_id[DEFAULT_PERSONA_ID]
        if "@" in persona_id:
            persona = self.by_id.get(persona_id)
        else:
            persona = self.latest.get(persona_id)
        if persona is None:
            raise ValidationFailed(
                f"persona {persona_id!r} does not exist",
                code="validation.persona_not_found",
                field="persona_id",
            )
        return persona
