"""Tools the model may call. Each declares whether it is safe to run again after a crash
interrupted it: one that is not gets an "interrupted" error result instead."""

from __future__ import annotations

import ast
import importlib
import math
import operator
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from runs.config import ConfigError
from runs.providers.base import ToolSpec

if TYPE_CHECKING:
    from runs.mcp_servers import McpServers

__all__ = [
    "ASK_USER",
    "MCP_PREFIX",
    "Tool",
    "ToolError",
    "ToolRegistry",
    "builtin_tools",
    "calculate",
    "load_tool_modules",
    "mcp_tool_name",
    "persona_allows",
    "split_mcp_name",
]

ASK_USER = "ask_user"
#: MCP tools are named ``mcp__<server>__<tool>`` (``runs.mcp_servers``).
MCP_PREFIX = "mcp__"


class ToolError(Exception):
    """The tool failed; the model sees the message as an error result and goes on."""


class Tool(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    input_schema: dict[str, Any]
    run: Callable[[dict[str, Any]], Awaitable[str]] | None = None
    safe_to_repeat: bool = False
    timeout_s: float = 30.0
    #: Where the tool comes from: "builtin", "module" (``tool_modules``) or "mcp".
    source: str = "module"
    mcp_server: str | None = None

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.input_schema)


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "log": math.log,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_MAX_EXPRESSION = 1000
_MAX_EXPONENT = 10_000
# Integer results stay small enough to compute in microseconds and to print (str() refuses
# past 4,300 digits): the tool runs on the event loop, where a timeout cannot stop it.
_MAX_INT_BITS = 14_000


def _too_large(op: ast.operator, left: Any, right: Any) -> bool:
    """Whether an integer ``**`` or ``*`` would exceed ``_MAX_INT_BITS`` (checked before
    computing it: ``(10**10000)**10000`` would otherwise hold the process for minutes)."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return False
    if isinstance(op, ast.Pow):
        return right > 0 and abs(left) > 1 and right * math.log2(abs(left)) > _MAX_INT_BITS
    if isinstance(op, ast.Mult):
        return abs(left).bit_length() + abs(right).bit_length() > _MAX_INT_BITS
    return False


def calculate(expression: str) -> float | int:
    """Evaluate arithmetic by walking the syntax tree: numbers, + - * / // % **, parentheses,
    a few math functions. No names, attributes or calls beyond those: never ``eval``."""
    if len(expression) > _MAX_EXPRESSION:
        raise ToolError("expression is too long")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression: {exc.msg}") from exc

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
                raise ToolError("exponent too large")
            if _too_large(node.op, left, right):
                raise ToolError("result too large")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
        ):
            return _FUNCTIONS[node.func.id](*(walk(a) for a in node.args))
        raise ToolError(f"unsupported element in expression: {ast.dump(node)[:60]}")

    try:
        return walk(tree)  # type: ignore[no-any-return]
    except ZeroDivisionError as exc:
        raise ToolError("division by zero") from exc
    except (OverflowError, ValueError, TypeError) as exc:
        raise ToolError(str(exc)) from exc


async def _calculator(arguments: dict[str, Any]) -> str:
    expression = arguments.get("expression")
    if not isinstance(expression, str):
        raise ToolError("argument 'expression' (a string) is required")
    result = calculate(expression)
    return str(int(result) if isinstance(result, float) and result.is_integer() else result)


async def _current_time(arguments: dict[str, Any]) -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def builtin_tools() -> list[Tool]:
    return [
        Tool(
            name="calculator",
            description="Evaluate an arithmetic expression, e.g. '(2 + 3) * 4' or 'sqrt(2)'.",
            input_schema={
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
            run=_calculator,
            safe_to_repeat=True,
            source="builtin",
        ),
        Tool(
            name="current_time",
            description="The current date and time in UTC (ISO 8601).",
            input_schema={"type": "object", "properties": {}},
            run=_current_time,
            safe_to_repeat=True,
            source="builtin",
        ),
        Tool(
            name=ASK_USER,
            description="Ask the user a question and wait for the answer.",
            input_schema={
                "type": "object",
                "properties": {"question": {"type": "string"}},
                "required": ["question"],
            },
            safe_to_repeat=True,
            source="builtin",
        ),
    ]


def mcp_tool_name(server: str, tool: str) -> str:
    return f"{MCP_PREFIX}{server}__{tool}"


def split_mcp_name(name: str) -> tuple[str, str] | None:
    """``mcp__<server>__<tool>`` (or ``__*``) as ``(server, tool)``; None for other names."""
    if not name.startswith(MCP_PREFIX):
        return None
    server, separator, tool = name[len(MCP_PREFIX) :].partition("__")
    if not separator or not server or not tool:
        return None
    return server, tool


def persona_allows(patterns: Iterable[str], name: str) -> bool:
    """Whether a persona's ``tools`` (or ``confirm_tools``) cover ``name``: listed as it is,
    or an MCP tool whose server is listed as ``mcp__<server>__*``."""
    listed = set(patterns)
    if name in listed:
        return True
    parsed = split_mcp_name(name)
    return parsed is not None and mcp_tool_name(parsed[0], "*") in listed


class ToolRegistry:
    """Built-in tools, ``tool_modules`` tools and, when configured, MCP servers' tools."""

    def __init__(self, tools: Iterable[Tool] = (), mcp: McpServers | None = None) -> None:
        self.tools: dict[str, Tool] = {}
        for tool in [*builtin_tools(), *tools]:
            self.tools[tool.name] = tool
        self.mcp = mcp

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    async def offered(self, names: Sequence[str]) -> list[Tool]:
        """The tools a persona listing ``names`` may use, in its order. MCP tools come from
        their server's last listing; a server never reached offers none."""
        found: dict[str, Tool] = {}
        for name in names:
            parsed = split_mcp_name(name)
            if parsed is None:
                if name in self.tools:
                    found.setdefault(name, self.tools[name])
                continue
            server, wanted = parsed
            for tool in (await self.mcp.tools(server) if self.mcp else None) or []:
                if wanted == "*" or tool.name == name:
                    found.setdefault(tool.name, tool)
        return list(found.values())

    async def resolve(self, name: str) -> Tool | None:
        """The tool called ``name``. An MCP tool of a server that never listed its tools is
        tried all the same (the server says whether it exists)."""
        tool = self.tools.get(name)
        parsed = split_mcp_name(name)
        if tool is not None or parsed is None or self.mcp is None or parsed[1] == "*":
            return tool
        server, wanted = parsed
        listed = await self.mcp.tools(server)
        if listed is None:
            return self.mcp.placeholder(server, wanted)
        return next((t for t in listed if t.name == name), None)


def load_tool_modules(names: Iterable[str]) -> list[Tool]:
    """Tools from the ``TOOLS`` list of each named module (config ``tool_modules``)."""
    tools: list[Tool] = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"tool module {name!r} cannot be imported: {exc}") from exc
        found = getattr(module, "TOOLS", None)
        if not isinstance(found, list) or not all(isinstance(t, Tool) for t in found):
            raise ConfigError(f"tool module {name!r} must define TOOLS: list[Tool]")
        tools.extend(found)
    return tools
