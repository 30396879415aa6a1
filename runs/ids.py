"""Time-ordered ids (UUIDv7 layout), so newest-first listing and cursors are cheap."""

from __future__ import annotations

import os
import re
import threading
import time

__all__ = ["is_id", "new_id"]

_lock = threading.Lock()
#: What ``str(uuid.UUID(...))`` writes: lowercase hex in 8-4-4-4-12 groups.
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z").match
_last_ms = 0
_counter = 0


def new_id() -> str:
    """A UUIDv7 string: 48-bit Unix ms, a 12-bit counter (monotonic within a process), random.

    Ids made by one process sort in creation order as plain strings.
    """
    global _last_ms, _counter  # noqa: PLW0603 - process-wide monotonic clock
    with _lock:
        now = time.time_ns() // 1_000_000
        if now <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted within one ms: borrow the next ms
                _last_ms += 1
                _counter = 0
            now = _last_ms
        else:
            _last_ms = now
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        counter = _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (now << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_id(value: str) -> bool:
    """Whether ``value`` is a canonical lowercase UUID string (what ``new_id`` makes)."""
    return _CANONICAL(value) is not None
