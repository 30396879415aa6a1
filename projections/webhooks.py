"""Webhook endpoints and their deliveries (streams ``webhook-<id>``, ``delivery-<id>``, and
the run events that are delivered).

A delivery is born here, in the transaction that appends the run event it carries: for each
active endpoint of the run's org that subscribes to the event's type, one ``pending`` row with
an id made from the endpoint and the event's position. So nothing can be lost between a run
event and its delivery, a rebuild gives the same rows, and the outbox worker
(``runs.webhooks.worker``) needs no checkpoint of its own: it reads the pending rows. Attempts
and outcomes are events of the delivery's own stream; ``version`` is that stream's last seq,
the ``expected_seq`` of the next claim.

Written with portable SQL (``?`` placeholders, no engine-specific functions), and reading
only the ``runs`` table of the runs projection, which is applied before this one.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from eventstore import RecordedEvent, SqlConnection
from projections.base import Decoded, Handler, TableProjection
from runs.events import (
    DomainEvent,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunWaitingForInput,
    WebhookDeliveryAttemptFailed,
    WebhookDeliveryClaimed,
    WebhookDeliverySucceeded,
    WebhookEndpointCreated,
    WebhookEndpointDeleted,
    WebhookEndpointDisabled,
    run_id_of,
)
from runs.webhooks.signing import delivery_id_for

__all__ = ["DELIVERY_COLUMNS", "ENDPOINT_COLUMNS", "WebhooksProjection"]

ENDPOINT_COLUMNS = (
    "endpoint_id",
    "org_id",
    "url",
    "events",
    "description",
    "status",
    "created_by_user_id",
    "created_at",
    "disabled_at",
    "disabled_reason",
    "version",
)
DELIVERY_COLUMNS = (
    "delivery_id",
    "endpoint_id",
    "org_id",
    "run_id",
    "thread_id",
    "event_type",
    "run_seq",
    "event_position",
    "created_at",
    "status",
    "attempts",
    "last_response_code",
    "last_error",
    "last_attempt_at",
    "next_attempt_at",
    "claimed_by",
    "version",
)

_decode_events = msgspec.json.Decoder(list[str]).decode
_RUN_EVENTS = frozenset(
    {RunCompleted.TYPE, RunFailed.TYPE, RunCancelled.TYPE, RunWaitingForInput.TYPE}
)


class WebhooksProjection(TableProjection):
    name = "webhooks"
    reads = ("runs",)
    tables: tuple[str, ...] = ("webhook_endpoints", "webhook_deliveries")
    ddl = """
    CREATE TABLE IF NOT EXISTS webhook_endpoints (
        endpoint_id        TEXT PRIMARY KEY,
        org_id             TEXT NOT NULL,
        url                TEXT NOT NULL,
        events             TEXT NOT NULL,
        description        TEXT,
        status             TEXT NOT NULL,
        created_by_user_id TEXT NOT NULL,
        created_at         TEXT NOT NULL,
        disabled_at        TEXT,
        disabled_reason    TEXT,
        version            INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS webhook_endpoints_by_org
        ON webhook_endpoints (org_id, status, endpoint_id);
    CREATE TABLE IF NOT EXISTS webhook_deliveries (
        delivery_id        TEXT PRIMARY KEY,
        endpoint_id        TEXT NOT NULL,
        org_id             TEXT NOT NULL,
        run_id             TEXT NOT NULL,
        thread_id          TEXT NOT NULL,
        event_type         TEXT NOT NULL,
        run_seq            INTEGER NOT NULL,
        event_position     INTEGER NOT NULL,
        created_at         TEXT NOT NULL,
        status             TEXT NOT NULL,
        attempts           INTEGER NOT NULL,
        last_response_code INTEGER,
        last_error         TEXT,
        last_attempt_at    TEXT,
        next_attempt_at    TEXT,
        claimed_by         TEXT,
        version            INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS webhook_deliveries_by_endpoint
        ON webhook_deliveries (endpoint_id, delivery_id);
    CREATE INDEX IF NOT EXISTS webhook_deliveries_due
        ON webhook_deliveries (status, next_attempt_at);
    CREATE INDEX IF NOT EXISTS webhook_deliveries_by_run
        ON webhook_deliveries (endpoint_id, run_id, event_position)
    """

    def handlers(self) -> dict[type[DomainEvent], Handler]:
        return {
            WebhookEndpointCreated: self._endpoint_created,
            WebhookEndpointDeleted: self._endpoint_ended("deleted"),
            WebhookEndpointDisabled: self._endpoint_ended("disabled"),
            RunCompleted: self._run_event,
            RunFailed: self._run_event,
            RunCancelled: self._run_event,
            RunWaitingForInput: self._run_event,
            WebhookDeliveryClaimed: self._claimed,
            WebhookDeliverySucceeded: self._succeeded,
            WebhookDeliveryAttemptFailed: self._attempt_failed,
        }

    def apply_many(self, conn: SqlConnection, events: Sequence[Decoded]) -> None:
        """One by one, except that run events are skipped while the log has no active
        endpoint: endpoints never become active again, so none of them can make a delivery."""
        if not any(isinstance(e, WebhookEndpointCreated) for _, e in events) and not (
            conn.fetch_one("SELECT 1 FROM webhook_endpoints WHERE status = 'active' LIMIT 1")
        ):
            events = [pair for pair in events if pair[0].type not in _RUN_EVENTS]
        super().apply_many(conn, events)

    # -- endpoints --------------------------------------------------------------------------

    @staticmethod
    def _endpoint_created(conn: SqlConnection, e: WebhookEndpointCreated, r: RecordedEvent) -> None:
        conn.execute(
            "INSERT INTO webhook_endpoints (endpoint_id, org_id, url, events, description,"
            " status, created_by_user_id, created_at, version)"
            " VALUES (?, ?, ?, ?, ?, 'active', ?, ?, ?)",
            (
                e.endpoint_id,
                e.org_id,
                e.url,
                msgspec.json.encode(e.events).decode(),
                e.description,
                e.created_by_user_id,
                r.created_at,
                r.seq,
            ),
        )

    @staticmethod
    def _endpoint_ended(status: str) -> Handler:
        def apply(conn: SqlConnection, e: DomainEvent, r: RecordedEvent) -> None:
            assert isinstance(e, WebhookEndpointDeleted | WebhookEndpointDisabled)
            reason = e.reason if isinstance(e, WebhookEndpointDisabled) else None
            # A deleted endpoint stays deleted; a disabled one may still be deleted.
            conn.execute(
                "UPDATE webhook_endpoints SET status = ?, disabled_at = ?, disabled_reason = ?,"
                " version = ? WHERE endpoint_id = ? AND status <> 'deleted'",
                (status, r.created_at, reason, r.seq, e.endpoint_id),
            )
            # What was still to be sent to it will not be.
            conn.execute(
                "UPDATE webhook_deliveries SET status = 'cancelled', next_attempt_at = NULL"
                " WHERE endpoint_id = ? AND status = 'pending'",
                (e.endpoint_id,),
            )

        return apply

    # -- run events become deliveries ------------------------------------------------------

    @staticmethod
    def _run_event(conn: SqlConnection, e: DomainEvent, r: RecordedEvent) -> None:
        run_id = run_id_of(r.stream)
        targets = conn.fetch_all(
            "SELECT w.endpoint_id, w.events, x.org_id, x.thread_id FROM runs x"
            " JOIN webhook_endpoints w ON w.org_id = x.org_id"
            " WHERE x.run_id = ? AND w.status = 'active' ORDER BY w.endpoint_id",
            (run_id,),
        )
        for endpoint_id, events, org_id, thread_id in targets:
            if r.type not in _decode_events(events):
                continue
            conn.execute(
                "INSERT INTO webhook_deliveries (delivery_id, endpoint_id, org_id, run_id,"
                " thread_id, event_type, run_seq, event_position, created_at, status, attempts,"
                " next_attempt_at, version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, 0)",
                (
                    delivery_id_for(endpoint_id, r.position, r.created_at),
                    endpoint_id,
                    org_id,
                    run_id,
                    thread_id,
                    r.type,
                    r.seq,
                    r.position,
                    r.created_at,
                    r.created_at,
                ),
            )

    # -- attempts ---------------------------------------------------------------------------

    @staticmethod
    def _claimed(conn: SqlConnection, e: WebhookDeliveryClaimed, r: RecordedEvent) -> None:
        # While claimed, the next attempt is due when the claim lapses (its worker died).
        conn.execute(
            "UPDATE webhook_deliveries SET attempts = ?, last_attempt_at = ?,"
            " next_attempt_at = CASE WHEN status = 'pending' THEN ? ELSE NULL END,"
            " claimed_by = ?, version = ? WHERE delivery_id = ?",
            (e.attempt, r.created_at, e.claimed_until, e.worker, r.seq, e.delivery_id),
        )

    @staticmethod
    def _succeeded(conn: SqlConnection, e: WebhookDeliverySucceeded, r: RecordedEvent) -> None:
        conn.execute(
            "UPDATE webhook_deliveries SET status = 'succeeded', last_response_code = ?,"
            " last_error = NULL, next_attempt_at = NULL, claimed_by = NULL, version = ?"
            " WHERE delivery_id = ?",
            (e.status_code, r.seq, e.delivery_id),
        )

    @staticmethod
    def _attempt_failed(
        conn: SqlConnection, e: WebhookDeliveryAttemptFailed, r: RecordedEvent
    ) -> None:
        # A delivery cancelled meanwhile (its endpoint went away) stays cancelled.
        conn.execute(
            "UPDATE webhook_deliveries SET"
            " status = CASE WHEN status = 'pending' THEN ? ELSE status END,"
            " next_attempt_at = CASE WHEN status = 'pending' THEN ? ELSE NULL END,"
            " last_response_code = ?, last_error = ?, claimed_by = NULL, version = ?"
            " WHERE delivery_id = ?",
            (
                "failed" if e.gave_up else "pending",
                None if e.gave_up else e.retry_at,
                e.status_code,
                e.error,
                r.seq,
                e.delivery_id,
            ),
        )
