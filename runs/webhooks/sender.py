"""The HTTP side of a delivery: the body, the signed POST, the backoff schedule.

Nothing here touches the log; ``runs.webhooks.worker`` decides what to send and records what
happened.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from datetime import UTC, datetime

import aiohttp
import msgspec

from eventstore import RecordedEvent
from runs.errors import RunsError
from runs.events import run_id_of
from runs.webhooks.signing import signature_header
from runs.webhooks.targets import PublicResolver, host_of, is_public_address

__all__ = ["DeliveryBody", "Retry", "Sender", "body_of", "epoch", "stamp"]

_ERROR_CHARS = 300
_USER_AGENT = "runlog-webhooks/1"


class DeliveryBody(msgspec.Struct):
    """What is POSTed: the run event, with the delivery's id (README, "Webhooks")."""

    id: str
    type: str
    run_id: str
    thread_id: str
    org_id: str
    seq: int
    created_at: str
    data: msgspec.Raw


def body_of(delivery_id: str, event: RecordedEvent, thread_id: str, org_id: str) -> bytes:
    """The exact bytes sent for a delivery: the same on every attempt."""
    return msgspec.json.encode(
        DeliveryBody(
            id=delivery_id,
            type=event.type,
            run_id=run_id_of(event.stream),
            thread_id=thread_id,
            org_id=org_id,
            seq=event.seq,
            created_at=event.created_at,
            data=msgspec.Raw(event.data.encode()),
        )
    )


class Retry(msgspec.Struct, frozen=True):
    """Exponential backoff: ``base * 2**(attempt - 1)`` seconds, capped, for a limited time."""

    base_s: float = 10.0
    max_delay_s: float = 3600.0
    give_up_after_s: float = 86400.0

    def delay(self, attempt: int) -> float:
        return float(min(self.base_s * 2 ** min(attempt - 1, 60), self.max_delay_s))


def stamp(epoch: float) -> str:
    """``epoch`` in the log's timestamp format (RFC 3339, milliseconds, UTC): such strings
    compare in time order."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def epoch(text: str) -> float:
    """A log timestamp as Unix seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Sender:
    """One HTTP client (and connection pool) for every delivery of a process."""

    def __init__(self, *, timeout_s: float, allow_private: bool, connections: int) -> None:
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        connector = aiohttp.TCPConnector(
            resolver=None if allow_private else PublicResolver(), limit=connections
        )
        self._session = aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": _USER_AGENT}
        )

    async def close(self) -> None:
        await self._session.close()

    async def send(
        self, url: str, secret: str, delivery_id: str, body: bytes, signed_at: int
    ) -> tuple[int | None, str | None, int]:
        """POST the body: ``(status, error, duration_ms)``; no status when none came back.
        Redirects are not followed (a 3xx is a failed attempt)."""
        headers = {
            "Content-Type": "application/json",
            "Runlog-Signature": signature_header(secret, signed_at, body),
            "Runlog-Delivery": delivery_id,
        }
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            self._check_literal_host(url)
            async with self._session.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                allow_redirects=False,
            ) as response:
                status = response.status
        except TimeoutError:
            error = f"no answer within {self.timeout_s:g} s"
        except (aiohttp.ClientError, OSError, RunsError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        return status, error, round((time.perf_counter() - started) * 1000)

    def _check_literal_host(self, url: str) -> None:
        """An address literal never reaches the resolver: check it here."""
        if self.allow_private:
            return
        host = host_of(url)
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            if not is_public_address(host):
                raise OSError(f"{host} is a loopback, private or reserved address")
