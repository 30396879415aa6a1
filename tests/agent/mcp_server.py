"""A small MCP server for the tests, written with the official SDK (``MCPServer``, the SDK's
FastMCP). Run as a script: over stdio by default, or over streamable HTTP on an already
listening socket (``--http-fd FD``: the test binds 127.0.0.1:0 and passes the socket, so
there is no port race and no wait for the server to start listening).

Its tools: ``add``; ``fail`` (raises); ``hang`` (sleeps past any timeout; writes a line to
``MCP_TEST_EVENTS`` when it starts and when it is cancelled); ``die`` (the process exits
mid-call); ``secret_digest`` (SHA-256 of the ``MCP_TEST_SECRET`` variable, to prove the
variable arrived without showing it); ``once`` (records each execution in
``MCP_TEST_EVENTS``; on a marker's first execution it then sleeps, so a crash can land
mid-call).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("runlog-test", log_level="ERROR")


def _note(line: str) -> None:
    path = os.environ.get("MCP_TEST_EVENTS")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def fail(reason: str = "no reason") -> str:
    """Always fails."""
    raise ToolError(f"failed on purpose: {reason}")


@server.tool()
async def hang(seconds: float = 60) -> str:
    """Sleeps for a long time."""
    _note(f"hang started {os.getpid()}")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _note("hang cancelled")
        raise
    return "woke up"


@server.tool()
def die() -> str:
    """The server process exits in the middle of the call."""
    os._exit(3)


@server.tool()
def pid() -> int:
    """This server's process id."""
    return os.getpid()


@server.tool()
def leak() -> str:
    """Answers with the MCP_TEST_SECRET variable (a careless server)."""
    return f"the secret is {os.environ.get('MCP_TEST_SECRET', '')}"


@server.tool()
def secret_digest() -> str:
    """SHA-256 of the MCP_TEST_SECRET variable."""
    return hashlib.sha256(os.environ.get("MCP_TEST_SECRET", "").encode()).hexdigest()


@server.tool()
async def once(marker: str) -> str:
    """Records the execution; a marker's first execution then takes a long time."""
    path = os.environ.get("MCP_TEST_EVENTS", "")
    seen = False
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            seen = any(line.startswith(f"once {marker} ") for line in handle)
    _note(f"once {marker} {os.getpid()}")
    if not seen:
        await asyncio.sleep(60)
    return f"done {marker}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-fd", type=int)
    args = parser.parse_args()
    if args.http_fd is None:
        server.run("stdio")
        return
    import uvicorn

    sock = socket.socket(fileno=args.http_fd)
    app = server.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    sys.exit(main())
