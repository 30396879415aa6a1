"""A webhook receiver on 127.0.0.1 (a real aiohttp server), and the README's verifier."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def readme_verifier() -> Callable[[str, bytes, str], bool]:
    """The ``verify`` function of the README's Webhooks section, executed as written, so the
    documentation a receiver copies is the code the tests rely on."""
    section = README.split("\n## Webhooks\n", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "README.md (Webhooks)", "exec"), namespace)
    verify: Callable[[str, bytes, str], bool] = namespace["verify"]
    return verify


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered (0: held, no answer)


class Receiver:
    """Records every request; answers the statuses of ``answers`` in turn, then 200. An
    answer of 0 holds the request open until :meth:`release` (or the connection drops)."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.answers = list(answers or [])
        self.received: list[Received] = []
        self._queue: asyncio.Queue[Received] = asyncio.Queue()
        self.held = asyncio.Event()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self.url

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def release(self) -> None:
        self._release.set()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.answers.pop(0) if self.answers else 200
        received = Received(dict(request.headers), body, status)
        self.received.append(received)
        self._queue.put_nowait(received)
        if status == 0:
            self.held.set()
            await self._release.wait()
            status = 200
        return web.Response(status=status, text="ok")

    async def next(self, timeout: float = 15.0) -> Received:
        async with asyncio.timeout(timeout):
            return await self._queue.get()
