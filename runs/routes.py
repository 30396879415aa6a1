"""Route table: which provider and model a run uses."""

from __future__ import annotations

from collections.abc import Mapping

from runs.config import Config, ConfigError, Route
from runs.errors import PolicyError

__all__ = ["SCRIPTED_MODEL", "RouteTable"]

SCRIPTED_MODEL = "scripted-1"
_PROVIDERS = frozenset({"anthropic", "scripted"})


class RouteTable:
    """Routes from the config; ``scripted`` always exists; ``anthropic`` appears on its own
    when there is no config route and ``ANTHROPIC_API_KEY`` is set (and is then the default)."""

    def __init__(self, config: Config, env: Mapping[str, str]) -> None:
        self._env = env
        routes: dict[str, Route] = {}
        for route in config.routes:
            if route.provider not in _PROVIDERS:
                raise ConfigError(
                    f"route {route.id!r}: provider must be one of {sorted(_PROVIDERS)}"
                )
            if route.id in routes:
                raise ConfigError(f"route {route.id!r} is defined twice")
            routes[route.id] = route
        if "scripted" not in routes:
            routes["scripted"] = Route(id="scripted", provider="scripted", model=SCRIPTED_MODEL)
        if not config.routes and env.get("ANTHROPIC_API_KEY"):
            routes["anthropic"] = Route(
                id="anthropic",
                provider="anthropic",
                model="claude-sonnet-4-5",
                api_key_env="ANTHROPIC_API_KEY",
                input_usd_per_mtok=3.0,
                output_usd_per_mtok=15.0,
                cache_write_usd_per_mtok=3.75,
                cache_read_usd_per_mtok=0.3,
                default=True,
            )
        defaults = [r.id for r in routes.values() if r.default]
        if len(defaults) > 1:
            raise ConfigError(f"more than one default route: {defaults}")
        self.default_id = defaults[0] if defaults else "scripted"
        self.routes = routes

    def resolve(self, route_id: str | None) -> Route:
        """The route to use; raises ``policy.route_not_found`` / ``policy.route_unavailable``."""
        route = self.routes.get(route_id or self.default_id)
        if route is None:
            raise PolicyError(
                f"route {route_id!r} does not exist",
                code="policy.route_not_found",
                route_id=route_id,
            )
        if route.api_key_env and not self._env.get(route.api_key_env):
            raise PolicyError(
                f"route {route.id!r} is unavailable: its API key variable"
                f" {route.api_key_env} is not set",
                code="policy.route_unavailable",
                route_id=route.id,
            )
        return route

    def api_key(self, route: Route) -> str | None:
        return self._env.get(route.api_key_env) if route.api_key_env else None
