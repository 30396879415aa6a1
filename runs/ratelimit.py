"""Failure counting for login throttling: per login and per client address.

In memory and per process: a restart forgets the counts, which is acceptable for a throttle
whose job is to make online password guessing slow, not to be an audit record.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

__all__ = ["FailureLimiter"]


class FailureLimiter:
    """Counts failures per key in a sliding window of ``window_seconds``.

    A key with ``max_failures`` failures in the window is blocked until the oldest of them
    leaves it. An attempt is counted *before* it is checked (``attempt``) and forgiven if it
    succeeds (``succeeded``), so a burst of concurrent attempts cannot all slip past the check
    while the slow password hashes run.
    """

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self.max_keys = max_keys
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, keys: Iterable[str]) -> float:
        """Seconds until every key may try again (0 when none is blocked)."""
        now = self.clock()
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if times is not None and len(times) >= self.max_failures:
                wait = max(wait, times[-self.max_failures] + self.window - now)
        return wait

    def attempt(self, keys: Iterable[str]) -> None:
        """Count an attempt against each key (as a failure until ``succeeded``)."""
        now = self.clock()
        for key in keys:
            times = self._recent(key, now) or deque()
            times.append(now)
            self._failures.pop(key, None)
            self._failures[key] = times  # most recently used last
        while len(self._failures) > self.max_keys:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, reset: str, forgive: Iterable[str] = ()) -> None:
        """A successful attempt: clear ``reset`` and take this attempt back from ``forgive``.

        Other failures counted against ``forgive`` (e.g. the client address) stay.
        """
        self._failures.pop(reset, None)
        for key in forgive:
            times = self._failures.get(key)
            if times:
                times.pop()
                if not times:
                    del self._failures[key]
