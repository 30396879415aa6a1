"""Service configuration: TOML file (``--config`` / ``RUNLOG_CONFIG``) plus environment.

Precedence: command-line flag > environment variable > config file > default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from runs.errors import RunsError

__all__ = ["Config", "ConfigError", "McpServer", "Route", "load_config"]


class ConfigError(RunsError):
    code = "internal.config"


class Route(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A provider route: which provider and model, where, with which key, at what price."""

    id: str
    provider: str  # "anthropic" | "scripted"
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    cache_write_usd_per_mtok: float = 0.0
    cache_read_usd_per_mtok: float = 0.0
    credits_multiplier: float = 1.0
    default: bool = False
    max_attempts: int = 4
    retry_base_delay_s: float = 0.5
    timeout_s: float = 600.0

    def cost_usd(
        self, input_tokens: int, output_tokens: int, cache_write: int, cache_read: int
    ) -> float:
        return (
            input_tokens * self.input_usd_per_mtok
            + output_tokens * self.output_usd_per_mtok
            + cache_write * self.cache_write_usd_per_mtok
            + cache_read * self.cache_read_usd_per_mtok
        ) / 1_000_000


class McpServer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A Model Context Protocol server whose tools personas may use (``runs.mcp_servers``)."""

    name: str
    command: list[str] | None = None  # stdio: the server is this subprocess
    url: str | None = None  # or streamable HTTP
    #: Variables for the subprocess; ``${VAR}`` in a value is taken from runlog's environment.
    env: dict[str, str] = {}
    timeout_seconds: float = 30.0
    safe_to_repeat: bool = False


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8001
    db: str = "./runlog.db"
    max_live_runs_per_org: int = 10
    sse_heartbeat_seconds: float = 15.0
    sse_batch_limit: int = 500
    access_token_ttl_seconds: int = 3600
    secret_key: str | None = None
    delta_coalesce_ms: int = 50
    shutdown_timeout_seconds: float = 10.0
    personas_dir: str | None = None
    max_body_bytes: int = 1024 * 1024
    login_max_failures: int = 5
    login_window_seconds: float = 300.0
    #: A client must send a request's headers (from connecting, or from the previous response
    #: on a kept-alive connection) and its body each within this time (slow-loris).
    request_read_timeout_seconds: float = 30.0
    #: While the log cannot be written (disk full), a run retries its append with growing
    #: delays for this long, then fails with ``internal.storage``.
    storage_retry_seconds: float = 600.0
    #: A process drives a run while it holds the run's lease, renewed every third of this;
    #: a lease its holder stopped renewing (the process died) is taken over after it.
    lease_seconds: float = 10.0
    #: Signed checkpoints (runs/anchors.py): an Ed25519 private key (PEM) kept outside the
    #: database, where each checkpoint goes, and how often at most the head is signed.
    checkpoint_key_file: str | None = None
    checkpoint_sink: str = "log"
    checkpoint_seconds: float = 60.0
    routes: list[Route] = []
    #: When set, ``GET /metrics`` requires ``Authorization: Bearer <metrics_token>``.
    metrics_token: str | None = None
    #: Modules whose ``TOOLS`` list adds tools (self-hosters' own; tests register one too).
    tool_modules: list[str] = []
    mcp_servers: list[McpServer] = []
    #: Webhook targets in loopback and private ranges are refused unless this is true (it is
    #: what lets a receiver on this machine, as in local tests, get deliveries).
    webhooks_allow_private: bool = False
    #: Each endpoint adds a row to every matching run event's append: the count is bounded.
    webhooks_max_endpoints_per_org: int = 20
    #: An attempt succeeds if the endpoint answers 2xx within this time.
    webhooks_timeout_seconds: float = 10.0
    #: Retries wait base * 2**(attempt - 1) seconds, at most the max delay, and stop this long
    #: after the run event (the delivery then fails).
    webhooks_retry_base_seconds: float = 10.0
    webhooks_retry_max_delay_seconds: float = 3600.0
    webhooks_retry_for_seconds: float = 86400.0


_ENV: dict[str, tuple[str, type]] = {
    "RUNLOG_HOST": ("host", str),
    "RUNLOG_PORT": ("port", int),
    "RUNLOG_DB": ("db", str),
    "RUNLOG_MAX_LIVE_RUNS": ("max_live_runs_per_org", int),
    "RUNLOG_SSE_HEARTBEAT_SECONDS": ("sse_heartbeat_seconds", float),
    "RUNLOG_SSE_BATCH_LIMIT": ("sse_batch_limit", int),
    "RUNLOG_SECRET_KEY": ("secret_key", str),
    "RUNLOG_PERSONAS_DIR": ("personas_dir", str),
    "RUNLOG_METRICS_TOKEN": ("metrics_token", str),
}


def load_config(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read the TOML file (if any), then environment variables, then explicit overrides."""
    env = os.environ if env is None else env
    path = path or env.get("RUNLOG_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    for name, (key, kind) in _ENV.items():
        if env.get(name):
            try:
                raw[key] = kind(env[name])
            except ValueError as exc:
                raise ConfigError(f"{name}={env[name]!r} is not a valid {kind.__name__}") from exc
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    try:
        config = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
    if config.sse_batch_limit < 1 or config.sse_heartbeat_seconds <= 0:
        raise ConfigError("sse_batch_limit must be >= 1 and sse_heartbeat_seconds > 0")
    if config.lease_seconds <= 0:
        raise ConfigError("lease_seconds must be > 0")
    if min(config.webhooks_timeout_seconds, config.webhooks_retry_base_seconds) <= 0:
        raise ConfigError("webhooks_timeout_seconds and webhooks_retry_base_seconds must be > 0")
    return config
