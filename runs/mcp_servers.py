"""Tools from Model Context Protocol servers, through the official ``mcp`` SDK.

Each configured server (``[[mcp_servers]]``) has one connection, held open by a task of its
own: the SDK's transports and sessions are anyio contexts that must be entered and left in
one task, while run tasks only send requests on them. The connection opens when the
service starts; a server that failed to start, died, or did not answer in time is connected
again on the next use. Its tools are offered to the model as ``mcp__<server>__<tool>``.

What reaches the model, and the log, is always a result: an error from the server, a
timeout or a dead connection becomes an error result (a :class:`ToolError`), never a
failed run. Values taken from the environment through ``${VAR}`` are secrets: they are
passed to the server's process and nowhere else — they are struck out of anything the
server sends back and of every log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import structlog

from runs.config import ConfigError, McpServer
from runs.personas import Persona
from runs.tools import Tool, ToolError, mcp_tool_name, split_mcp_name

if TYPE_CHECKING:
    from mcp import ClientSession
    from mcp import types as mcp_types

# The SDK is imported where it is used: it takes a second or more to import, which every
# command line run (verify, export, tail) and a service without MCP servers would pay.

__all__ = ["McpServers", "render_result"]

log = structlog.get_logger("runlog.mcp")

_SERVER_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
# What model APIs accept as a tool name; an MCP tool whose full name does not fit is skipped.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAX_PAGES = 100
_REDACTED = "[redacted]"
# Shorter values would strike out ordinary words; a secret is longer than this anyway.
_MIN_SECRET_CHARS = 4
_CLOSE_TIMEOUT_S = 10.0
# Starting a server (a subprocess importing its SDK, say) may take longer than a short call
# timeout allows on a busy machine.
_MIN_CONNECT_TIMEOUT_S = 10.0


def _check(config: McpServer) -> None:
    where = f"mcp_servers {config.name!r}"
    # No "__" and no trailing "_": "mcp__<server>__<tool>" must split back unambiguously.
    if not _SERVER_NAME.match(config.name) or "__" in config.name or config.name.endswith("_"):
        raise ConfigError(f"{where}: name must match [a-z0-9_]{{1,32}} without '__' or a final '_'")
    if (config.command is None) == (config.url is None):
        raise ConfigError(f"{where}: give exactly one of command (stdio) or url (streamable HTTP)")
    if config.command is not None and (not config.command or not config.command[0]):
        raise ConfigError(f"{where}: command must name a program")
    if config.url is not None and not config.url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: url must be http:// or https://")
    if config.url is not None and config.env:
        raise ConfigError(f"{where}: env applies to a command, not to a url")
    if not config.timeout_seconds > 0:
        raise ConfigError(f"{where}: timeout_seconds must be > 0")


class _Unavailable(Exception):
    """The server could not be reached (its message is safe to show the model)."""


class _Connection:
    """One server: its session (opened by an owner task), its last tool listing."""

    def __init__(self, config: McpServer, environ: Mapping[str, str]) -> None:
        self.config = config
        self.name = config.name
        self._environ = environ
        #: The last listing the server gave (kept while it restarts), None before the first.
        self.listing: list[mcp_types.Tool] | None = None
        named = {name for template in config.env.values() for name in _VARIABLE.findall(template)}
        #: The values ``${VAR}`` brings in, longest first (so none is left half struck out).
        self.secrets = sorted(
            {v for n in named if len(v := environ.get(n, "")) >= _MIN_SECRET_CHARS},
            key=len,
            reverse=True,
        )
        self._ready: asyncio.Future[ClientSession] | None = None
        self._stop: asyncio.Event | None = None
        self._owner: asyncio.Task[None] | None = None
        self.closing: set[asyncio.Task[None]] = set()
        self.generation = 0
        self.connect_timeout = max(config.timeout_seconds, _MIN_CONNECT_TIMEOUT_S)

    # -- the connection's life --------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        """``env`` with ``${VAR}`` taken from runlog's environment."""
        missing = sorted(
            {
                name
                for template in self.config.env.values()
                for name in _VARIABLE.findall(template)
                if name not in self._environ
            }
        )
        if missing:
            raise _Unavailable(
                f"the MCP server {self.name!r} cannot start: its env names"
                f" {', '.join(missing)}, which runlog's environment does not set"
            )
        return {
            key: _VARIABLE.sub(lambda match: self._environ[match.group(1)], template)
            for key, template in self.config.env.items()
        }

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client
        from mcp.client.streamable_http import streamable_http_client

        if self.config.url is not None:
            return streamable_http_client(self.config.url)
        command = self.config.command
        assert command
        parameters = StdioServerParameters(
            command=command[0], args=command[1:], env=self._environment()
        )
        return stdio_client(parameters)

    def connect(self) -> asyncio.Future[ClientSession]:
        """The session being opened or open, starting the owner task if there is none."""
        if self._owner is None or self._owner.done():
            self.generation += 1
            self._ready = asyncio.get_running_loop().create_future()
            self._stop = asyncio.Event()
            self._owner = asyncio.create_task(
                self._own(self._ready, self._stop), name=f"mcp-{self.name}"
            )
        assert self._ready is not None
        return self._ready

    async def session(self) -> tuple[ClientSession, int]:
        """A live session and its generation, connecting first if there is none."""
        ready = self.connect()
        generation = self.generation
        # Shielded: a caller that gives up (cancel, timeout) leaves the connection to others.
        return await asyncio.shield(ready), generation

    async def _own(self, ready: asyncio.Future[ClientSession], stop: asyncio.Event) -> None:
        """Open the transport and the session, list the tools, then hold them until told to
        stop; leaving the contexts closes the session and stops the server's process."""
        from mcp import ClientSession

        try:
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(ClientSession(read, write))
                async with asyncio.timeout(self.connect_timeout):
                    await session.initialize()
                    self.listing = await _list_tools(session)
                log.info("mcp.connected", server=self.name, tools=len(self.listing))
                ready.set_result(session)
                await stop.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = self.redact(_describe(exc))
            log.warning("mcp.connection_failed", server=self.name, error=reason)
            if not ready.done():
                unavailable = exc if isinstance(exc, _Unavailable) else None
                ready.set_exception(
                    unavailable
                    or _Unavailable(f"the MCP server {self.name!r} is not available ({reason})")
                )
        finally:
            if not ready.done():
                ready.set_exception(_Unavailable(f"the MCP server {self.name!r} was stopped"))
            # Callers that gave up no longer wait on it: mark a failure as seen, so asyncio
            # does not report it as never retrieved.
            if not ready.cancelled():
                ready.exception()

    def discard(self, generation: int, reason: str) -> None:
        """Close this generation's connection (in the background); the next use reconnects."""
        if generation != self.generation or self._owner is None:
            return
        log.warning("mcp.restarting", server=self.name, reason=reason)
        self._release()

    def _release(self) -> None:
        owner, stop = self._owner, self._stop
        self._owner = None
        if owner is not None and not owner.done():
            assert stop is not None
            stop.set()
            self.closing.add(owner)
            owner.add_done_callback(self.closing.discard)

    async def close(self) -> None:
        self._release()
        if self.closing:
            _, pending = await asyncio.wait(list(self.closing), timeout=_CLOSE_TIMEOUT_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    # -- calls ------------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, _REDACTED)
        return text

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        """Call one tool; every failure is a :class:`ToolError` the model sees."""
        from mcp import types as mcp_types
        from mcp.shared.exceptions import MCPError

        timeout = self.config.timeout_seconds
        try:
            async with asyncio.timeout(self.connect_timeout):
                session, generation = await self.session()
        except TimeoutError as exc:
            self.discard(self.generation, "did not start in time")
            raise ToolError(
                f"the MCP server {self.name!r} did not start within {self.connect_timeout:g} s"
            ) from exc
        except _Unavailable as exc:
            raise ToolError(self.redact(str(exc))) from exc
        try:
            async with asyncio.timeout(timeout):
                result = await session.call_tool(tool, arguments)
        except TimeoutError as exc:
            # The SDK has told the server to cancel the request; a server that hangs may
            # be stuck for good, so the next call gets a fresh one.
            self.discard(generation, "a call timed out")
            raise ToolError(
                f"the MCP server {self.name!r} did not answer within {timeout:g} s;"
                " it is restarted for the next call"
            ) from exc
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                self.discard(generation, "the connection closed")
                raise ToolError(
                    f"the MCP server {self.name!r} closed the connection (it may have exited)"
                    " during the call; it is restarted for the next call"
                ) from exc
            raise ToolError(self.redact(f"MCP error {exc.code}: {exc.message}")) from exc
        except Exception as exc:
            # The transport failed under the call (an HTTP server gone, a broken pipe).
            reason = self.redact(_describe(exc))
            self.discard(generation, reason)
            raise ToolError(
                f"the call to the MCP server {self.name!r} failed ({reason});"
                " it is restarted for the next call"
            ) from exc
        output = self.redact(render_result(result))
        if result.is_error:
            raise ToolError(output or f"the MCP tool {tool!r} failed")
        return output


async def _list_tools(session: ClientSession) -> list[mcp_types.Tool]:
    from mcp import types as mcp_types

    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def render_result(result: mcp_types.CallToolResult) -> str:
    """A tool result as the text the model reads: text blocks as they are, other blocks
    named, structured content as JSON when there is no text."""
    from mcp import types as mcp_types

    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(f"[{block.type}: {block.mime_type}]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            inner = block.resource
            if isinstance(inner, mcp_types.TextResourceContents):
                parts.append(inner.text)
            else:
                parts.append(f"[resource: {inner.uri}]")
        else:
            parts.append(f"[resource link: {block.uri}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an error; for the task groups' exception groups, the first cause."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    message = str(exc)
    return f"{type(exc).__name__}: {message}"[:300] if message else type(exc).__name__


class McpServers:
    """Every configured server, by name."""

    def __init__(self, configs: Iterable[McpServer], environ: Mapping[str, str]) -> None:
        self.connections: dict[str, _Connection] = {}
        for config in configs:
            _check(config)
            if config.name in self.connections:
                raise ConfigError(f"mcp_servers {config.name!r} is defined twice")
            self.connections[config.name] = _Connection(config, environ)

    def start(self, personas: Iterable[Persona] = ()) -> None:
        """Start connecting every server, in the background: the first run that needs a
        server's tools waits for its listing. One that does not come up is logged and tried
        again when a run needs it. A persona naming a server that is not configured is
        logged (its runs are refused those tools, like any tool they may not use)."""
        for persona in personas:
            for name in {*persona.tools, *persona.confirm_tools}:
                parsed = split_mcp_name(name)
                if parsed is not None and parsed[0] not in self.connections:
                    log.warning(
                        "mcp.unknown_server", persona_id=persona.persona_id, tool=name[:100]
                    )
        for connection in self.connections.values():
            connection.connect()

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.connections.values()))

    async def _listing(self, connection: _Connection) -> list[mcp_types.Tool] | None:
        if connection.listing is None:
            with contextlib.suppress(_Unavailable, TimeoutError):
                async with asyncio.timeout(connection.connect_timeout):
                    await connection.session()
        return connection.listing

    async def tools(self, server: str) -> list[Tool] | None:
        """A server's tools as runlog tools (from its last listing; connecting first if it
        never listed them). None when the server is not configured or was never reached."""
        connection = self.connections.get(server)
        if connection is None:
            return None
        listing = await self._listing(connection)
        if listing is None:
            return None
        tools = []
        for found in listing:
            name = mcp_tool_name(server, found.name)
            if not _TOOL_NAME.match(name):
                log.warning("mcp.tool_skipped", server=server, tool=found.name[:100])
                continue
            tools.append(
                self._tool(connection, found.name, found.description or "", found.input_schema)
            )
        return tools

    def placeholder(self, server: str, tool: str) -> Tool | None:
        """A tool of a server that was never reached: calling it tries the server again."""
        connection = self.connections.get(server)
        if connection is None:
            return None
        return self._tool(connection, tool, "", {"type": "object"})

    @staticmethod
    def _tool(connection: _Connection, tool: str, description: str, schema: dict[str, Any]) -> Tool:
        async def run(arguments: dict[str, Any]) -> str:
            return await connection.call(tool, arguments)

        timeout = connection.config.timeout_seconds + connection.connect_timeout
        return Tool(
            name=mcp_tool_name(connection.name, tool),
            description=description,
            input_schema=schema,
            run=run,
            safe_to_repeat=connection.config.safe_to_repeat,
            # The call bounds itself (to connect, then to answer); this is the backstop.
            timeout_s=timeout + 5,
            source="mcp",
            mcp_server=connection.name,
        )
