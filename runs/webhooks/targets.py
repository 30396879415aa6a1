"""Where webhooks may be sent: http(s) URLs whose host is a public address.

Loopback, private, link-local (cloud metadata services live there), multicast and reserved
addresses are refused unless ``webhooks_allow_private = true``: a webhook URL is chosen by any
user of an org, and must not become a way to reach the service's own network. The check is
made when an endpoint is created (the address literal, or what the name resolves to then) and
again on every delivery (:class:`PublicResolver`), since a name can resolve elsewhere later.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from runs.errors import PolicyError, ValidationFailed

__all__ = ["MAX_URL_LENGTH", "PublicResolver", "check_target", "host_of", "is_public_address"]

MAX_URL_LENGTH = 2048
_RESOLVE_TIMEOUT_S = 5.0


def is_public_address(address: str) -> bool:
    """Whether ``address`` (an IP literal) is a public unicast address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _url_error(message: str) -> ValidationFailed:
    return ValidationFailed(message, code="validation.url", field="url")


def host_of(url: str) -> str:
    """The host of a well-formed http(s) URL, or :class:`ValidationFailed` on ``url``."""
    if len(url) > MAX_URL_LENGTH:
        raise _url_error(f"url is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise _url_error("url must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _url_error(f"url is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise _url_error("url must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        # The URL is recorded in the log, which never holds credentials.
        raise _url_error("url must not contain credentials (user:password@)")
    host = parts.hostname
    if not host:
        raise _url_error("url must name a host")
    if port == 0:
        raise _url_error("url must not use port 0")
    return host


async def check_target(url: str, allow_private: bool) -> None:
    """Refuse a URL that is not http(s), or (unless allowed) whose host is not public."""
    host = host_of(url)
    if allow_private:
        return
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        addresses = [host]
    except ValueError:
        addresses = await _resolve(host)
    private = [a for a in addresses if not is_public_address(a)]
    if private or host == "localhost" or host.endswith(".localhost"):
        raise PolicyError(
            f"{host} is a loopback, private or reserved address; webhooks are sent only to"
            " public addresses unless webhooks_allow_private = true",
            code="policy.webhook_private_target",
            field="url",
        )


async def _resolve(host: str) -> list[str]:
    """The addresses ``host`` resolves to now; none when it does not resolve (yet): such a
    target is accepted, and checked again on each delivery."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(_RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        return []
    return [str(info[4][0]) for info in infos]


class PublicResolver(AbstractResolver):
    """aiohttp's resolver, keeping only public addresses: a name that resolves to nothing
    else fails the connection (and the attempt is recorded as failed)."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        public = [r for r in results if is_public_address(r["host"])]
        if not public:
            raise OSError(f"{host} resolves only to loopback, private or reserved addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()
