"""The outbox worker: sends pending deliveries, one claimed attempt at a time.

See docs/architecture.md, "Webhooks". Deliveries are rows of the webhooks projection, born in
the transaction of the run event they carry. The worker wakes when a relevant commit lands or
when the next retry falls due (never by polling), claims an attempt by appending
``webhook.delivery_claimed`` guarded by the delivery stream's seq (so with several processes
exactly one claims it), sends the signed body, and records the outcome guarded by the claim's
seq (so a worker that outlived its claim records nothing). A worker that dies mid-attempt
leaves a claim that lapses; the delivery is then tried again under the same id. It runs beside
the runs and never touches their streams, so a slow receiver cannot slow a run or an append.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from eventstore import (
    AppendRequest,
    ConcurrencyError,
    EventStore,
    RecordedEvent,
    StoreClosedError,
)
from projections.webhook_queries import WebhookQueries
from runs.events import (
    DomainEvent,
    WebhookDeliveryAttemptFailed,
    WebhookDeliveryClaimed,
    WebhookDeliverySucceeded,
    WebhookEndpointDeleted,
    WebhookEndpointDisabled,
    delivery_stream,
    encode_event,
    run_stream,
    webhook_stream,
)
from runs.webhooks.sender import Retry, Sender, body_of, epoch, stamp
from runs.webhooks.signing import DEFAULT_EVENTS, endpoint_secret

__all__ = ["CONCURRENCY", "DeliveryWorker"]

log = structlog.get_logger("runlog.webhooks")

#: Deliveries attempted at once by one process.
CONCURRENCY = 16
_SCAN = 200


_WAKING_TYPES = frozenset(DEFAULT_EVENTS)


class DeliveryWorker:
    def __init__(
        self,
        store: EventStore,
        service_key: bytes,
        *,
        timeout_s: float = 10.0,
        retry: Retry | None = None,
        allow_private: bool = False,
    ) -> None:
        self.store = store
        self.queries = WebhookQueries(store)
        self.service_key = service_key
        self.timeout_s = timeout_s
        #: A claim outlives the longest attempt, so a live worker never loses its claim.
        self.lease_s = 2 * timeout_s
        self.retry = retry or Retry()
        self.allow_private = allow_private
        self.worker_id = f"{socket.gethostname()}/{os.getpid()}"
        self._wake = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._sender: Sender | None = None
        self._unwatch: Callable[[], None] | None = None
        #: Whether an endpoint exists (None: not known; looked up when a scan finds nothing
        #: pending). While none does, no run event can have made a delivery, so only
        #: ``webhook.*`` events wake the loop: a service without webhooks does not scan its
        #: deliveries at every run's end. An endpoint's event sets it at once (True, or None
        #: after a deletion), and a lookup's answer never overwrites what an event set during it.
        self._endpoints: bool | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._sender = Sender(
            timeout_s=self.timeout_s, allow_private=self.allow_private, connections=CONCURRENCY
        )
        self._unwatch = self.store.live.watch(self._on_commit)
        self._task = asyncio.create_task(self._loop(), name="runlog-webhooks")

    async def stop(self, grace_s: float) -> None:
        """Stop taking deliveries; let attempts in flight finish for ``grace_s`` seconds,
        then cancel them (their claims lapse and they are tried again after a restart)."""
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        inflight = list(self._inflight.values())
        if inflight:
            _, late = await asyncio.wait(inflight, timeout=grace_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._sender is not None:
            await self._sender.close()
            self._sender = None

    def _on_commit(self, events: Sequence[RecordedEvent]) -> None:
        for event in events:
            if event.type.startswith("webhook."):
                if event.type == WebhookEndpointDeleted.TYPE:
                    self._endpoints = None  # it may have been the last: look again
                elif event.type.startswith("webhook.endpoint_"):
                    self._endpoints = True
                self._wake.set()
            elif self._endpoints is not False and event.type in _WAKING_TYPES:
                self._wake.set()

    # -- the loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            # Armed before the read, so a commit during the read is not missed.
            self._wake.clear()
            try:
                wait_s = await self._start_due()
            except StoreClosedError:
                return
            except Exception:
                log.exception("webhooks.scan_failed")
                wait_s = 1.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()

    async def _start_due(self) -> float | None:
        """Start every due delivery (up to the concurrency); seconds until the next one."""
        now = time.time()
        rows = await self.queries.pending(_SCAN)
        if not rows and self._endpoints is None:
            found = await self.queries.any_endpoint()
            if self._endpoints is None:
                self._endpoints = found
        for row in rows:
            delivery_id = row["delivery_id"]
            if delivery_id in self._inflight:
                continue
            due = epoch(row["next_attempt_at"])
            if due > now:
                return due - now
            if len(self._inflight) >= CONCURRENCY:
                return None  # a finishing attempt wakes the loop
            task = asyncio.create_task(self._attempt(row), name=f"delivery-{delivery_id}")
            self._inflight[delivery_id] = task
            task.add_done_callback(functools.partial(self._done, delivery_id))
        return None

    def _done(self, delivery_id: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(delivery_id, None)
        self._wake.set()

    # -- one attempt ------------------------------------------------------------------------

    async def _attempt(self, row: dict[str, Any]) -> None:
        delivery_id = row["delivery_id"]
        bound = structlog.contextvars.bind_contextvars(
            delivery_id=delivery_id, run_id=row["run_id"]
        )
        try:
            await self._try(row)
        except Exception:
            # The claim lapses and the delivery is tried again.
            log.exception("webhooks.attempt_crashed")
        finally:
            structlog.contextvars.reset_contextvars(**bound)

    async def _try(self, row: dict[str, Any]) -> None:
        endpoint = await self.queries.endpoint(None, row["endpoint_id"])
        if endpoint is None or endpoint["status"] != "active":
            return  # its pending deliveries are cancelled by the same event
        delivery_id = row["delivery_id"]
        attempt = row["attempts"] + 1
        claim = WebhookDeliveryClaimed(
            delivery_id=delivery_id,
            endpoint_id=row["endpoint_id"],
            attempt=attempt,
            worker=self.worker_id,
            claimed_until=stamp(time.time() + self.lease_s),
        )
        try:
            claimed = await self.store.append(
                delivery_stream(delivery_id), [encode_event(claim)], row["version"]
            )
        except ConcurrencyError:
            return  # another worker claimed it (or recorded an outcome) first
        body = await self._body(row)
        signed_at = int(time.time())
        secret = endpoint_secret(self.service_key, row["endpoint_id"])
        assert self._sender is not None
        status, error, duration_ms = await self._sender.send(
            endpoint["url"], secret, delivery_id, body, signed_at
        )
        common: dict[str, Any] = {
            "delivery_id": delivery_id,
            "attempt": attempt,
            "signed_at": signed_at,
            "duration_ms": duration_ms,
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        also: list[AppendRequest] = []
        outcome: DomainEvent
        if status is not None and 200 <= status < 300:
            outcome = WebhookDeliverySucceeded(status_code=status, **common)
        elif status == 410:
            outcome = WebhookDeliveryAttemptFailed(
                status_code=status, error="410 Gone: endpoint disabled", gave_up=True, **common
            )
            disabled = WebhookEndpointDisabled(
                endpoint_id=row["endpoint_id"],
                reason="the endpoint answered 410 Gone",
                delivery_id=delivery_id,
                status_code=status,
            )
            also.append(
                AppendRequest(
                    webhook_stream(row["endpoint_id"]),
                    [encode_event(disabled)],
                    endpoint["version"],
                )
            )
        else:
            retry_at = time.time() + self.retry.delay(attempt)
            gave_up = retry_at > epoch(row["created_at"]) + self.retry.give_up_after_s
            outcome = WebhookDeliveryAttemptFailed(
                status_code=status,
                error=error or f"HTTP {status}",
                retry_at=None if gave_up else stamp(retry_at),
                gave_up=gave_up,
                **common,
            )
        recorded = AppendRequest(
            delivery_stream(delivery_id), [encode_event(outcome)], claimed[-1].seq
        )
        try:
            try:
                await self.store.append_many([recorded, *also])
            except ConcurrencyError:
                if not also:
                    raise
                # The endpoint changed meanwhile (disabled by another delivery's 410, or
                # deleted): this attempt's outcome is still recorded.
                await self.store.append_many([recorded])
        except ConcurrencyError:
            # Our claim lapsed and another worker took the delivery (or the endpoint changed
            # meanwhile): what we sent counts as one more "at least once".
            log.warning("webhooks.outcome_not_recorded", attempt=attempt, status=status)
            return
        log.info("webhooks.attempt", attempt=attempt, status=status, duration_ms=duration_ms)

    async def _body(self, row: dict[str, Any]) -> bytes:
        stream = run_stream(row["run_id"])
        (event,) = await self.store.read_stream(stream, row["run_seq"] - 1, 1)
        return body_of(row["delivery_id"], event, row["thread_id"], row["org_id"])
