"""Login throttling: failures per user (or unknown login) and per client address, with growing
delays.

On SQLite (one process serves the log) the counts are kept in memory: a restart forgets them,
which is acceptable for a throttle whose job is to make online password guessing slow, not to
be an audit record. On PostgreSQL, where several processes serve one log, they are counted in
the database (``eventstore.throttle``), so a guesser gains nothing by spreading attempts over
the processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol

from eventstore.throttle import FailureCounts

__all__ = ["FailureLimiter", "LoginThrottle", "SharedFailureLimiter"]


class LoginThrottle(Protocol):
    """What the login handler asks: how long to wait, a failure, a success."""

    async def wait_seconds(self, keys: Iterable[str]) -> float: ...

    async def record_failure(self, keys: Iterable[str]) -> None: ...

    async def record_success(self, key: str) -> None: ...

    def exclusive(self, key: str) -> contextlib.AbstractAsyncContextManager[None]: ...


class _Turns:
    """Attempts on one key take turns in this process (the lock is dropped when nobody
    waits)."""

    def __init__(self) -> None:
        self._turns: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def exclusive(self, key: str) -> AsyncIterator[None]:
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = asyncio.Lock()
        try:
            async with turn:
                yield
        finally:
            if not turn.locked() and self._turns.get(key) is turn:
                del self._turns[key]


def _delay(count: int, max_failures: int, base_delay: float, window: float) -> float:
    """The wait after the last of ``count`` failures (0 while they are free)."""
    if count < max_failures:
        return 0.0
    return float(min(window, base_delay * 2 ** min(count - max_failures, 30)))


class FailureLimiter:
    """Counts failures per key over the last ``window_seconds``.

    The first ``max_failures`` failures cost nothing; after that each attempt must wait a delay
    that doubles with every further failure (``base_delay_seconds``, then twice that, ...), at
    most ``window_seconds``, counted from the last failure. Growing delays rather than a hard
    lock: a stranger who guesses at someone's account slows it down but cannot shut its owner
    out for the whole window with a handful of requests.

    Only failures count (a correct password is never refused for attempts still in flight);
    ``exclusive`` makes the attempts on one key take turns, so concurrent guesses cannot all
    pass the check while the slow password hashes run.
    """

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        *,
        base_delay_seconds: float = 1.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self.base_delay = base_delay_seconds
        self.max_keys = max_keys
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._turns = _Turns()

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
        """Seconds until every key may try again (0 when none must wait)."""
        now = self.clock()
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if times is None or len(times) < self.max_failures:
                continue
            delay = _delay(len(times), self.max_failures, self.base_delay, self.window)
            wait = max(wait, times[-1] + delay - now)
        return wait

    def failed(self, keys: Iterable[str]) -> None:
        """Count a failed attempt against each key."""
        now = self.clock()
        for key in keys:
            times = self._recent(key, now) or deque()
            times.append(now)
            self._failures.pop(key, None)
            self._failures[key] = times  # most recently used last
        while len(self._failures) > self.max_keys:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, key: str) -> None:
        """A successful attempt clears ``key`` (the user's count, never the address's)."""
        self._failures.pop(key, None)

    def exclusive(self, key: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Attempts on ``key`` one at a time (the lock is dropped when nobody waits)."""
        return self._turns.exclusive(key)

    # The LoginThrottle interface.

    async def wait_seconds(self, keys: Iterable[str]) -> float:
        return self.retry_after(keys)

    async def record_failure(self, keys: Iterable[str]) -> None:
        self.failed(keys)

    async def record_success(self, key: str) -> None:
        self.succeeded(key)


class SharedFailureLimiter:
    """The same policy as :class:`FailureLimiter`, counted in the database for every process
    serving the log (PostgreSQL). Attempts on one key take turns within a process; across
    processes, at most one attempt per process can be in flight on a key at once."""

    def __init__(
        self,
        counts: FailureCounts,
        max_failures: int,
        window_seconds: float,
        *,
        base_delay_seconds: float = 1.0,
    ) -> None:
        self.counts = counts
        self.max_failures = max_failures
        self.window = window_seconds
        self.base_delay = base_delay_seconds
        self._turns = _Turns()

    async def wait_seconds(self, keys: Iterable[str]) -> float:
        wait = 0.0
        for count, age in (await self.counts.recent(list(keys), self.window)).values():
            delay = _delay(count, self.max_failures, self.base_delay, self.window)
            wait = max(wait, delay - age)
        return wait

    async def record_failure(self, keys: Iterable[str]) -> None:
        await self.counts.add(list(keys), self.window)

    async def record_success(self, key: str) -> None:
        await self.counts.clear(key)

    def exclusive(self, key: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._turns.exclusive(key)
