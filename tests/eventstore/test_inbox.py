"""The one-consumer queue behind the store's writer task and a model call's items."""

from __future__ import annotations

import asyncio
import time

import pytest

from eventstore.inbox import Inbox


async def test_items_come_out_in_the_order_put() -> None:
    inbox = Inbox()
    for item in ("a", "b", "c"):
        inbox.put(item)
    assert [await inbox.get() for _ in range(3)] == ["a", "b", "c"]
    assert not inbox.items


async def test_a_waiting_get_wakes_on_put() -> None:
    inbox = Inbox()
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    inbox.put(42)
    assert await asyncio.wait_for(getter, 1) == 42


async def test_wait_returns_at_its_deadline_with_nothing_there() -> None:
    inbox = Inbox()
    started = time.monotonic()
    await asyncio.wait_for(inbox.wait(asyncio.get_running_loop().time() + 0.05), 2)
    assert time.monotonic() - started >= 0.04
    assert not inbox.items


async def test_wait_returns_at_once_for_an_item_and_leaves_it() -> None:
    inbox = Inbox()
    inbox.put("x")
    await asyncio.wait_for(inbox.wait(None), 0.5)
    assert list(inbox.items) == ["x"]


async def test_a_cancelled_get_leaves_no_waiter_behind() -> None:
    inbox = Inbox()
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    inbox.put("after")  # no stale waiter to set; the item waits for the next get
    assert await asyncio.wait_for(inbox.get(), 1) == "after"
