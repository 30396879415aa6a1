"""A real server on a real TCP port for clients that are not asyncio (schemathesis, raw sockets)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestServer

T = TypeVar("T")


class LiveServer:
    """The app on 127.0.0.1:<free port>, served by its own event loop in a daemon thread."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = TestServer(app, host="127.0.0.1")
        self.url = ""

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        self.run(self.server.start_server())
        self.url = str(self.server.make_url("")).rstrip("/")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.server.close(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
