"""aiohttp imported without reading the system's CA certificates at import time.

Importing any part of aiohttp imports its client, and ``aiohttp.connector`` makes its two
default client TLS contexts at import (``_make_ssl_context``): each one reads and parses the
whole CA bundle, about 0.12 s of CPU together, at every start of a server that makes no
outbound connection then. :func:`import_aiohttp` imports aiohttp with those contexts'
``set_default_verify_paths()`` postponed to their first handshake (``wrap_bio`` is what asyncio
calls, ``wrap_socket`` the blocking client), so a webhook or an anchor sink reached over HTTPS
verifies against the same CA store as before, loaded once, when first needed.

Only contexts created while aiohttp is being imported are deferred; ``ssl.SSLContext`` itself is
left alone (aiohttp's modules keep it for ``isinstance`` checks), and a context built by anyone
afterwards loads its certificates as usual.
"""

from __future__ import annotations

import ssl
import sys
import threading
from typing import Any

__all__ = ["import_aiohttp"]


class _CertificatesOnFirstUse(ssl.SSLContext):
    """A client context whose default CA paths are loaded just before its first handshake."""

    _load_lock = threading.Lock()
    _deferred = False

    def _load_deferred(self) -> None:
        if self._deferred:
            with self._load_lock:
                if self._deferred:
                    ssl.SSLContext.set_default_verify_paths(self)
                    self._deferred = False

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load_deferred()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load_deferred()
        return super().wrap_bio(*args, **kwargs)


def import_aiohttp() -> None:
    """Import aiohttp (once per process) with its default TLS contexts' CA certificates
    deferred; after the first import of aiohttp this does nothing."""
    if "aiohttp" in sys.modules:
        return
    deferred: list[ssl.SSLContext] = []

    def record(context: ssl.SSLContext) -> None:
        deferred.append(context)

    # set_default_verify_paths is _ssl._SSLContext's: shadowed on ssl.SSLContext for the
    # import only (ssl.create_default_context calls it through load_default_certs).
    ssl.SSLContext.set_default_verify_paths = record  # type: ignore[method-assign,assignment]
    try:
        import aiohttp  # noqa: F401
    finally:
        del ssl.SSLContext.set_default_verify_paths
    for context in deferred:
        context.__class__ = _CertificatesOnFirstUse
        context._deferred = True  # type: ignore[attr-defined]
