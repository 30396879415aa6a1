"""A tool the durability tests register (config ``tool_modules``): it records every execution
in the file named by ``RUNLOG_TEST_COUNT_FILE``, then takes a while, so a crash can land
mid-call. It is not safe to repeat, like most tools with side effects."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from runs.tools import Tool


async def _count(arguments: dict[str, Any]) -> str:
    path = os.environ["RUNLOG_TEST_COUNT_FILE"]
    marker = str(arguments.get("marker", ""))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(marker + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    await asyncio.sleep(float(arguments.get("seconds", 0.3)))
    return f"counted {marker}"


TOOLS = [
    Tool(
        name="counter",
        description="Counts its executions (test tool).",
        input_schema={"type": "object", "properties": {"marker": {"type": "string"}}},
        run=_count,
        safe_to_repeat=False,
    )
]
