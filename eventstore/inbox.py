"""A queue for one consumer task: a deque and at most one waiter.

``asyncio.Queue`` keeps lists of waiting getters and putters and wakes them through futures of
their own: some ten Python calls an item. Where only one task ever takes items (the store's
writer task, a model call's loop) and nothing ever waits to put, a deque and one future do.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

__all__ = ["Inbox"]


class Inbox:
    """Items for one consumer: ``put`` from the event loop, ``get`` or ``wait`` in one task.
    ``items`` is the deque itself, for a consumer that takes what is there without waiting."""

    __slots__ = ("_waiter", "items")

    def __init__(self) -> None:
        self.items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: Any) -> None:
        self.items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, deadline: float | None = None) -> None:
        """Until an item is there or the loop's clock (``time.monotonic``) reaches
        ``deadline`` (``None``: no deadline)."""
        if self.items:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if deadline is None else loop.call_at(deadline, _wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def get(self) -> Any:
        """The first item, once there is one."""
        items = self.items
        while not items:
            await self.wait()
        return items.popleft()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
