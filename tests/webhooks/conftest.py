"""An app that may send webhooks to 127.0.0.1, with retries in milliseconds, and a receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import ADMIN_KEY, Api
from tests.webhooks.receiver import Receiver

FAST = {
    "webhooks_allow_private": True,
    "webhooks_retry_base_seconds": 0.05,
    "webhooks_timeout_seconds": 5,
}


@pytest.fixture
async def api(aiohttp_client: Any, make_app: Callable[..., web.Application]) -> Api:
    return Api(await aiohttp_client(make_app(**FAST)), ADMIN_KEY)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


async def register(api: Api, url: str, **body: Any) -> dict[str, Any]:
    _, endpoint = await api.request(
        "POST", "/v1/webhook-endpoints", json={"url": url, **body}, expect=201
    )
    return dict(endpoint)


async def deliveries(api: Api, endpoint_id: str) -> list[dict[str, Any]]:
    _, rows = await api.request(
        "GET", f"/v1/webhook-endpoints/{endpoint_id}/deliveries", expect=200
    )
    return list(rows)


async def deliveries_when(
    api: Api,
    endpoint_id: str,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 15.0,
) -> list[dict[str, Any]]:
    """The endpoint's deliveries once ``done`` holds for them. Every change to a delivery is
    an append, so this waits for the log's next commit rather than sleeping."""
    changed = asyncio.Event()
    unwatch = api.runtime.store.live.watch(lambda _: changed.set())
    try:
        async with asyncio.timeout(timeout):
            while True:
                changed.clear()  # armed before the read: a commit during it is not missed
                rows = await deliveries(api, endpoint_id)
                if done(rows):
                    return rows
                await changed.wait()
    finally:
        unwatch()


async def settled(api: Api, endpoint_id: str, count: int) -> list[dict[str, Any]]:
    """The endpoint's deliveries once ``count`` of them are no longer pending."""
    return await deliveries_when(
        api, endpoint_id, lambda rows: sum(r["status"] != "pending" for r in rows) >= count
    )
