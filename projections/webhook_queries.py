"""Reads over the webhook tables: the REST handlers' (each taking the caller's org id) and the
outbox worker's."""

from __future__ import annotations

from typing import Any

import msgspec

from eventstore import EventStore
from projections.webhooks import DELIVERY_COLUMNS, ENDPOINT_COLUMNS

__all__ = ["WebhookQueries"]

_ENDPOINTS = f"SELECT {', '.join(ENDPOINT_COLUMNS)} FROM webhook_endpoints"
_DELIVERIES = f"SELECT {', '.join(DELIVERY_COLUMNS)} FROM webhook_deliveries"
_decode_events = msgspec.json.Decoder(list[str]).decode


def _endpoint(row: tuple[Any, ...]) -> dict[str, Any]:
    endpoint = dict(zip(ENDPOINT_COLUMNS, row, strict=True))
    endpoint["events"] = _decode_events(endpoint["events"])
    return endpoint


def _delivery(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(DELIVERY_COLUMNS, row, strict=True))


class WebhookQueries:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def endpoint(self, org_id: str | None, endpoint_id: str) -> dict[str, Any] | None:
        """An endpoint that is not deleted; of ``org_id`` (``None``: of any org)."""
        sql = f"{_ENDPOINTS} WHERE endpoint_id = ? AND status <> 'deleted'"
        params: tuple[Any, ...] = (endpoint_id,)
        if org_id is not None:
            sql += " AND org_id = ?"
            params = (endpoint_id, org_id)
        row = await self.store.fetch_one(sql, params)
        return None if row is None else _endpoint(row)

    async def endpoints(self, org_id: str, limit: int, before: str | None) -> list[dict[str, Any]]:
        rows = await self.store.fetch_all(
            f"{_ENDPOINTS} WHERE org_id = ? AND status <> 'deleted' AND endpoint_id < ?"
            " ORDER BY endpoint_id DESC LIMIT ?",
            (org_id, before or "\uffff", limit),
        )
        return [_endpoint(r) for r in rows]

    async def endpoint_count(self, org_id: str) -> int:
        """Endpoints of the org that are not deleted (disabled ones count: they can be)."""
        row = await self.store.fetch_one(
            "SELECT count(*) FROM webhook_endpoints WHERE org_id = ? AND status <> 'deleted'",
            (org_id,),
        )
        return int(row[0]) if row else 0

    async def any_endpoint(self) -> bool:
        """Whether any org has an endpoint that is not deleted."""
        row = await self.store.fetch_one(
            "SELECT 1 FROM webhook_endpoints WHERE status <> 'deleted' LIMIT 1"
        )
        return row is not None

    async def deliveries(
        self, endpoint_id: str, limit: int, before: str | None
    ) -> list[dict[str, Any]]:
        rows = await self.store.fetch_all(
            f"{_DELIVERIES} WHERE endpoint_id = ? AND delivery_id < ?"
            " ORDER BY delivery_id DESC LIMIT ?",
            (endpoint_id, before or "\uffff", limit),
        )
        return [_delivery(r) for r in rows]

    async def delivery(self, delivery_id: str) -> dict[str, Any] | None:
        row = await self.store.fetch_one(f"{_DELIVERIES} WHERE delivery_id = ?", (delivery_id,))
        return None if row is None else _delivery(row)

    async def pending(self, limit: int) -> list[dict[str, Any]]:
        """Pending deliveries that are next in line for their run (no earlier delivery of
        the same run to the same endpoint is still pending), soonest due first."""
        rows = await self.store.fetch_all(
            f"{_DELIVERIES} d WHERE d.status = 'pending' AND NOT EXISTS ("
            " SELECT 1 FROM webhook_deliveries p WHERE p.endpoint_id = d.endpoint_id"
            " AND p.run_id = d.run_id AND p.status = 'pending'"
            " AND p.event_position < d.event_position)"
            " ORDER BY d.next_attempt_at, d.event_position LIMIT ?",
            (limit,),
        )
        return [_delivery(r) for r in rows]
