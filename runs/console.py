"""The browser console: static HTML, CSS and JavaScript modules shipped in ``runs/console/``.

The files are read once from the installed package and served as they are (no build step,
nothing from another origin). The page calls the same ``/v1`` API as any client, with the
token in an ``Authorization`` header. See "Console" in README.md.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from aiohttp import web

from runs.errors import NotFound

__all__ = ["ASSET_NAMES", "SECURITY_HEADERS", "console_asset", "console_index"]

_CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
}

#: Everything the console loads comes from this origin; scripts only from its own files (no
#: inline script, no eval), and no other site may frame it (clickjacking the Cancel button).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@functools.cache
def _files() -> dict[str, bytes]:
    folder = resources.files("runs").joinpath("console")
    return {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and any(entry.name.endswith(ext) for ext in _CONTENT_TYPES)
    }


#: The files ``GET /console/{name}`` serves (the OpenAPI document lists them).
ASSET_NAMES: tuple[str, ...] = tuple(sorted(_files()))


def _response(request: web.Request, name: str) -> web.Response:
    body = _files()[name]
    etag = hashlib.sha256(body).hexdigest()[:32]
    headers = {
        **SECURITY_HEADERS,
        # Revalidated on every load, so an upgraded server never runs with old modules.
        "Cache-Control": "no-cache",
        "ETag": f'"{etag}"',
    }
    content_type = _CONTENT_TYPES[name[name.rindex(".") :]]
    if request.headers.get("If-None-Match") == f'"{etag}"':
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers, content_type=content_type, charset="utf-8")


async def console_index(request: web.Request) -> web.Response:
    """``GET /``: the console's page (views are chosen by the URL's fragment, client side)."""
    return _response(request, "index.html")


async def console_asset(request: web.Request) -> web.Response:
    """``GET /console/{name}``: one of the console's files."""
    name = request.match_info["name"]
    if name not in _files():
        raise NotFound("no such console file")
    return _response(request, name)
