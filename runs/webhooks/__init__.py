"""Webhooks: signed, at-least-once deliveries of run outcomes, recorded in the log.

See docs/architecture.md, "Webhooks".
"""

from runs.webhooks.signing import (
    DEFAULT_EVENTS,
    delivery_id_for,
    endpoint_secret,
    sign,
    signature_header,
)

__all__ = ["DEFAULT_EVENTS", "delivery_id_for", "endpoint_secret", "sign", "signature_header"]
