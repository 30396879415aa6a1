"""An app that may send webhooks to 127.0.0.1, with retries in milliseconds, and a receiver."""

from __future__ import annotations

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
