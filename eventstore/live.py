"""Live notification of committed events, shared by every subscriber of a stream.

The writer publishes each committed batch here (on the event loop, after the commit). For each
stream that has subscribers we keep one :class:`StreamTail`: the most recent events (bounded)
and an :class:`asyncio.Event` that is set when new events arrive. Subscribers share it; none
holds a buffer of its own, so a slow subscriber costs nothing but its own cursor: when it falls
behind the bounded window it reads the log again; no per-connection buffer grows with a run.

A subscriber that has caught up may instead leave a *sink* on the tail: a function that takes
the stream's next events as they are published, on the event loop, without waking its task
(an SSE connection writes them to its socket). Following a busy run, that saves a task switch,
an async generator step and a wake-up per connection per commit. Whenever a sink cannot take a
batch (not the next events after its cursor, a full socket buffer, the stream's last event),
its task is woken and reads from its cursor as any subscriber does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import islice

from eventstore.model import RecordedEvent

__all__ = ["Deliver", "LiveHub", "StreamTail"]

_log = logging.getLogger("runlog.eventstore")

#: How many recent events of a followed stream are kept in memory for live subscribers.
TAIL_WINDOW = 512
#: How many streams :class:`LiveHub` remembers the last published seq of (then it forgets them
#: all, and a subscriber reads the log as it would for a stream it never heard of).
LAST_SEQS = 65536


#: Takes a stream's next events (consecutive, never empty) on the event loop; returns False,
#: having done nothing, when it cannot take them now. It must not raise or block.
Deliver = Callable[[list[RecordedEvent]], bool]


class _Sink:
    __slots__ = ("cursor", "deliver", "woken")

    def __init__(self, cursor: int, deliver: Deliver, woken: asyncio.Future[None]) -> None:
        self.cursor = cursor
        self.deliver = deliver
        self.woken = woken


class StreamTail:
    """The shared live state of one followed stream."""

    __slots__ = ("changed", "recent", "sinks", "subscribers")

    def __init__(self) -> None:
        self.recent: deque[RecordedEvent] = deque(maxlen=TAIL_WINDOW)
        self.changed = asyncio.Event()
        self.subscribers = 0
        self.sinks: list[_Sink] = []

    def push(self, events: Iterable[RecordedEvent]) -> None:
        recent = self.recent
        pushed = list(events)
        for event in pushed:
            if recent and event.seq != recent[-1].seq + 1:
                # A gap (another process wrote): the window must stay contiguous.
                recent.clear()
            recent.append(event)
        if self.sinks:
            self._deliver(pushed)
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def _deliver(self, events: list[RecordedEvent]) -> None:
        """Hand ``events`` to every sink whose cursor they follow; wake the others' tasks."""
        sinks, self.sinks = self.sinks, []
        first = events[0].seq if events else -1
        for sink in sinks:
            taken = False
            if sink.cursor + 1 == first:
                try:
                    taken = sink.deliver(events)
                except Exception:  # a sink must not raise: its task takes over
                    _log.exception("live.sink_failed")
            if taken:
                sink.cursor = events[-1].seq
                self.sinks.append(sink)
            elif not sink.woken.done():
                sink.woken.set_result(None)

    async def follow(self, cursor: int, deliver: Deliver) -> int:
        """Leave ``deliver`` on the tail from ``cursor`` (the subscriber has read everything
        up to it) until it cannot take a batch or the stream is woken; returns the cursor it
        reached. A cancelled wait removes the sink."""
        sink = _Sink(cursor, deliver, asyncio.get_running_loop().create_future())
        self.sinks.append(sink)
        try:
            await sink.woken
        finally:
            if sink in self.sinks:
                self.sinks.remove(sink)
        return sink.cursor

    def after(self, seq: int, limit: int) -> list[RecordedEvent] | None:
        """Events after ``seq`` from memory, ``[]`` when caught up, ``None`` when not covered."""
        recent = self.recent
        if not recent:
            return None
        first = recent[0].seq
        if seq >= recent[-1].seq:
            return []
        if seq + 1 < first:
            return None
        start = seq + 1 - first
        behind = len(recent) - start  # events after the cursor, all in the window
        if behind <= limit and behind <= start:
            # A follower is usually a few events behind the newest: walk from that end
            # (islice from the left steps over the whole window to get there).
            newest_first = list(islice(reversed(recent), behind))
            newest_first.reverse()
            return newest_first
        return list(islice(recent, start, start + limit))


class LiveHub:
    """Maps followed streams to their tails; streams nobody follows cost nothing."""

    def __init__(self) -> None:
        self._tails: dict[str, StreamTail] = {}
        self._watchers: list[Callable[[Sequence[RecordedEvent]], None]] = []
        #: The seq of the last event published of each stream (see :meth:`published_up_to`).
        self._last_seqs: dict[str, int] = {}

    def watch(self, callback: Callable[[Sequence[RecordedEvent]], None]) -> Callable[[], None]:
        """Call ``callback`` with every committed batch (on the event loop, after the commit);
        returns the function that stops it. For in-process workers that wake on commits
        instead of polling; a callback must be quick and must not raise."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback)

    def published_up_to(self, stream: str, seq: int) -> bool:
        """Whether every event of ``stream`` published here since this hub began (or since it
        last forgot) is at or before ``seq``, where it knows the stream at all. Then a
        subscriber whose cursor is ``seq`` has nothing to read: an event committed and not
        yet published reaches its tail when it is. Events before this hub began (a restart,
        another process's, never published here) are all before the first one published
        here, so they are before ``seq`` too. A stream it does not know gives False."""
        last = self._last_seqs.get(stream)
        return last is not None and last <= seq

    def acquire(self, stream: str) -> StreamTail:
        tail = self._tails.get(stream)
        if tail is None:
            tail = self._tails[stream] = StreamTail()
        tail.subscribers += 1
        return tail

    def release(self, stream: str, tail: StreamTail) -> None:
        tail.subscribers -= 1
        if tail.subscribers <= 0 and self._tails.get(stream) is tail:
            del self._tails[stream]

    def publish(self, events: Iterable[RecordedEvent]) -> None:
        if self._watchers:
            events = list(events)
            for callback in list(self._watchers):
                try:
                    callback(events)
                except Exception:  # a watcher must never stop the writer
                    _log.exception("live.watcher_failed")
        by_stream: dict[str, list[RecordedEvent]] = {}
        tails = self._tails
        last_seqs = self._last_seqs
        if len(last_seqs) >= LAST_SEQS:
            last_seqs.clear()
        for event in events:
            last_seqs[event.stream] = event.seq
            if event.stream in tails:
                by_stream.setdefault(event.stream, []).append(event)
        for stream, stream_events in by_stream.items():
            tails[stream].push(stream_events)

    @property
    def followed_streams(self) -> int:
        """How many streams have at least one subscriber (for leak checks and metrics)."""
        return len(self._tails)

    @property
    def subscribers(self) -> int:
        return sum(tail.subscribers for tail in self._tails.values())

    def wake_all(self) -> None:
        """Wake every subscriber (used on close so they can notice and stop)."""
        for tail in self._tails.values():
            tail.push(())
