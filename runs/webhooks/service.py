"""Commands on webhook endpoints: create (the secret is returned, never stored) and delete."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

from eventstore import ConcurrencyError, EventStore
from projections.webhook_queries import WebhookQueries
from runs.errors import Conflict, NotFound, PolicyError, ValidationFailed
from runs.events import (
    WebhookEndpointCreated,
    WebhookEndpointDeleted,
    encode_event,
    webhook_stream,
)
from runs.ids import new_id
from runs.webhooks.signing import DEFAULT_EVENTS, endpoint_secret
from runs.webhooks.targets import check_target

__all__ = ["WebhookService"]

_CONFLICT_RETRIES = 5


class WebhookService:
    def __init__(
        self,
        store: EventStore,
        service_key: bytes,
        *,
        allow_private: bool,
        max_per_org: int = 20,
    ) -> None:
        self.store = store
        self.queries = WebhookQueries(store)
        self.service_key = service_key
        self.allow_private = allow_private
        self.max_per_org = max_per_org
        # Creation in one org is serialised so the limit is exact within this process.
        self._org_locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )

    def secret_of(self, endpoint_id: str) -> str:
        return endpoint_secret(self.service_key, endpoint_id)

    async def create(
        self,
        org_id: str,
        user_id: str,
        url: str,
        events: Sequence[str] | None,
        description: str | None,
    ) -> tuple[dict[str, Any], str]:
        """A new endpoint: its row and its signing secret (the only time it is returned)."""
        chosen = _events(events)
        await check_target(url, self.allow_private)
        endpoint_id = new_id()
        created = WebhookEndpointCreated(
            endpoint_id=endpoint_id,
            org_id=org_id,
            url=url,
            events=chosen,
            created_by_user_id=user_id,
            description=description,
        )
        async with self._org_locks[org_id]:
            if await self.queries.endpoint_count(org_id) >= self.max_per_org:
                raise PolicyError(
                    f"the org has {self.max_per_org} webhook endpoints, the most it may have;"
                    " delete one first",
                    code="policy.webhook_endpoint_limit",
                    limit=self.max_per_org,
                )
            await self.store.append(webhook_stream(endpoint_id), [encode_event(created)], 0)
        row = await self.queries.endpoint(org_id, endpoint_id)
        assert row is not None
        return row, self.secret_of(endpoint_id)

    async def delete(self, org_id: str, user_id: str, endpoint_id: str) -> None:
        for _ in range(_CONFLICT_RETRIES):
            row = await self.queries.endpoint(org_id, endpoint_id)
            if row is None:
                raise NotFound("webhook endpoint not found")
            deleted = WebhookEndpointDeleted(endpoint_id=endpoint_id, user_id=user_id)
            try:
                await self.store.append(
                    webhook_stream(endpoint_id), [encode_event(deleted)], row["version"]
                )
                return
            except ConcurrencyError:
                continue  # disabled meanwhile, or deleted by a concurrent request: look again
        raise Conflict("the webhook endpoint is busy, try again", code="runs.conflict")


def _events(events: Sequence[str] | None) -> list[str]:
    if events is None:
        return list(DEFAULT_EVENTS)
    unknown = [e for e in events if e not in DEFAULT_EVENTS]
    if unknown or not events:
        raise ValidationFailed(
            f"events must be a non-empty list of {', '.join(DEFAULT_EVENTS)}",
            code="validation.events",
            field="events",
        )
    return [e for e in DEFAULT_EVENTS if e in events]
