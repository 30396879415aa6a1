"""The HTTP handlers of ``/v1/webhook-endpoints`` (registered by ``server.add_routes``).

They reach the service through a context function that ``server.py`` provides, so this module
needs nothing from the HTTP application but the request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from aiohttp import web

from runs.errors import NotFound
from runs.http_input import path_id, query_before, query_limit, read_body
from runs.schemas import (
    CreateWebhookEndpoint,
    NewWebhookEndpoint,
    Ok,
    WebhookDelivery,
    WebhookEndpoint,
)
from runs.service import Principal
from runs.webhooks.service import WebhookService

__all__ = ["Context", "WebhookHandlers"]

#: The service, the caller and the body read timeout of a request.
Context = Callable[[web.Request], tuple[WebhookService, Principal, float]]

_json = msgspec.json.Encoder()


def _response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")


def _endpoint(row: Mapping[str, Any]) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row["endpoint_id"],
        url=row["url"],
        events=row["events"],
        description=row["description"],
        status=row["status"],
        created_at=row["created_at"],
        disabled_at=row["disabled_at"],
        disabled_reason=row["disabled_reason"],
    )


def _delivery(row: Mapping[str, Any]) -> WebhookDelivery:
    return WebhookDelivery(
        id=row["delivery_id"],
        endpoint_id=row["endpoint_id"],
        type=row["event_type"],
        run_id=row["run_id"],
        thread_id=row["thread_id"],
        seq=row["run_seq"],
        status=row["status"],
        attempts=row["attempts"],
        last_response_code=row["last_response_code"],
        last_error=row["last_error"],
        last_attempt_at=row["last_attempt_at"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
    )


class WebhookHandlers:
    def __init__(self, context: Context) -> None:
        self.context = context

    async def _owned(self, request: web.Request) -> tuple[WebhookService, Principal, str]:
        """The path's endpoint, if it exists in the caller's org (else 404)."""
        service, who, _ = self.context(request)
        endpoint_id = path_id(request, "endpoint_id")
        if await service.queries.endpoint(who.org_id, endpoint_id) is None:
            raise NotFound("webhook endpoint not found")
        return service, who, endpoint_id

    async def create(self, request: web.Request) -> web.Response:
        service, who, timeout_s = self.context(request)
        body = await read_body(request, CreateWebhookEndpoint, timeout_s)
        row, secret = await service.create(
            who.org_id, who.user_id, body.url, body.events, body.description
        )
        created = _endpoint(row)
        fields = {name: getattr(created, name) for name in created.__struct_fields__}
        return _response(NewWebhookEndpoint(**fields, secret=secret), 201)

    async def list(self, request: web.Request) -> web.Response:
        service, who, _ = self.context(request)
        rows = await service.queries.endpoints(
            who.org_id, query_limit(request), query_before(request)
        )
        return _response([_endpoint(r) for r in rows])

    async def get(self, request: web.Request) -> web.Response:
        service, who, endpoint_id = await self._owned(request)
        row = await service.queries.endpoint(who.org_id, endpoint_id)
        if row is None:
            raise NotFound("webhook endpoint not found")
        return _response(_endpoint(row))

    async def delete(self, request: web.Request) -> web.Response:
        service, who, endpoint_id = await self._owned(request)
        await service.delete(who.org_id, who.user_id, endpoint_id)
        return _response(Ok())

    async def deliveries(self, request: web.Request) -> web.Response:
        service, _, endpoint_id = await self._owned(request)
        rows = await service.queries.deliveries(
            endpoint_id, query_limit(request), query_before(request)
        )
        return _response([_delivery(r) for r in rows])
