"""What happens once at start-up: personas pinned in the log, first-run bootstrap, the secret."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from eventstore import EventStore, is_postgres_url
from projections.queries import Queries
from runs.config import Config, ConfigError
from runs.events import PersonaRecorded, encode_event, persona_stream
from runs.personas import PersonaRegistry
from runs.service import Accounts

__all__ = ["bootstrap", "load_secret", "record_personas"]


async def record_personas(store: EventStore, queries: Queries, personas: PersonaRegistry) -> None:
    """Record each persona version once; refuse a file that changed a recorded version."""
    recorded = await queries.persona_hashes()
    for persona in personas.by_id.values():
        digest = persona.content_sha256()
        known = recorded.get(persona.persona_id)
        if known is None:
            event = PersonaRecorded(
                persona_id=persona.persona_id,
                key=persona.key,
                version=persona.version,
                content_sha256=digest,
                definition=persona.definition(),
            )
            await store.append(persona_stream(persona.key), [encode_event(event)])
        elif known != digest:
            raise ConfigError(
                f"persona {persona.persona_id} differs from the version recorded in the log"
                f" (sha256 {known[:12]}…, file {digest[:12]}…): persona versions are"
                " immutable; give the changed persona a new version number"
            )


async def bootstrap(accounts: Accounts, env: Mapping[str, str]) -> str | None:
    """On an empty log: org ``default``, user ``admin`` and an API key (returned, to be
    printed once). ``RUNLOG_BOOTSTRAP_API_KEY`` fixes the key, for automation."""
    if await accounts.queries.org_count() > 0:
        return None
    org_id = await accounts.create_org("default")
    user_id = await accounts.create_user(org_id, "admin", "admin@localhost")
    _, key = await accounts.create_key(user_id, env.get("RUNLOG_BOOTSTRAP_API_KEY") or None)
    return key


def load_secret(config: Config) -> bytes:
    """The key that signs access tokens: configured, or a file beside the log made once."""
    if config.secret_key:
        return config.secret_key.encode()
    if is_postgres_url(config.db):
        # Several processes, maybe on several machines, serve one PostgreSQL log: a file
        # beside one of them would give each its own key and break their access tokens.
        raise ConfigError(
            "with a PostgreSQL log, set RUNLOG_SECRET_KEY (or secret_key in the config file):"
            " every process serving the database signs access tokens with it"
        )
    path = Path(f"{config.db}.secret")
    try:
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read or create the token secret {path}: {exc}") from exc
