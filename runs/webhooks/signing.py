"""Secrets, signatures and delivery ids: pure functions, no I/O.

An endpoint's signing secret is never stored anywhere: it is an HMAC of the endpoint id under
the service's secret key (``RUNLOG_SECRET_KEY`` or the ``<db>.secret`` file), so the log holds
no secret and every process that has the key can sign. Rotating the service key rotates every
endpoint's secret (README, "Webhooks").
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import datetime

from runs.events import RunCancelled, RunCompleted, RunFailed, RunWaitingForInput

__all__ = [
    "DEFAULT_EVENTS",
    "delivery_id_for",
    "endpoint_secret",
    "sign",
    "signature_header",
]

#: The run events an endpoint can subscribe to (and gets when it names none).
DEFAULT_EVENTS: tuple[str, ...] = (
    RunCompleted.TYPE,
    RunFailed.TYPE,
    RunCancelled.TYPE,
    RunWaitingForInput.TYPE,
)

_SECRET_CONTEXT = b"runlog webhook endpoint secret v1\x00"
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


def endpoint_secret(service_key: bytes, endpoint_id: str) -> str:
    """The endpoint's signing secret, derived (HMAC-SHA256) from the service's key."""
    digest = hmac.new(service_key, _SECRET_CONTEXT + endpoint_id.encode(), hashlib.sha256)
    return SECRET_PREFIX + digest.hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"`` with the secret (as UTF-8 bytes)."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Runlog-Signature`` header: ``t=<unix seconds>,v1=<hex>``."""
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def delivery_id_for(endpoint_id: str, position: int, created_at: str) -> str:
    """The delivery of the event at ``position`` to an endpoint: always the same id.

    It is made from the log alone (so a rebuild of the deliveries table gives the same ids and
    a receiver sees one ``Runlog-Delivery`` per event however often it is tried) and it has the
    UUIDv7 layout with the event's time, so deliveries sort by time like every other id.
    """
    moment = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    ms = int(moment.timestamp()) * 1000 + moment.microsecond // 1000
    digest = hashlib.sha256(f"{endpoint_id}:{position}".encode()).digest()
    rand = int.from_bytes(digest[:10], "big")
    rand_a = rand >> 68 & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))
