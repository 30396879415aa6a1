"""Wake-ups from other processes on PostgreSQL: one ``LISTEN`` connection per store.

Every commit, whichever process makes it, sends ``pg_notify('runlog_events', '<head>')`` in its
transaction (eventstore/postgres.py), so the notification arrives only once the events are
visible. A store keeps one dedicated asyncpg connection (``application_name`` ``runlog-listen``)
listening on that channel. A notification only says "look now": it sets one flag, and one reader
task reads the log after the last position the store published and hands those events to the
store's live hub (GroupCommitStore._publish_read), so a burst of notifications costs one read
and nothing is published twice or out of order. A notification whose head the store has already
published, or committed itself (its writer publishes those; one that arrives while the store's
own batch is in flight is judged once that batch is through), costs nothing. There is no timer:
without notifications nothing is read.

When the listening connection is lost (a server restart, ``pg_terminate_backend``, a network
cut that the socket notices) the store connects again with growing delays, then reads the log
after its last published position and wakes every live subscriber, so each reads again from its
own cursor: what committed while nobody listened is not missed. Reads that fail (the database
unreachable) are tried again with the same delays.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from eventstore.errors import StoreClosedError
from eventstore.model import RecordedEvent

__all__ = ["APPLICATION_NAME", "Listener"]

log = structlog.get_logger("runlog.store")

#: ``application_name`` of the listening connection (how operators find it in
#: ``pg_stat_activity``).
APPLICATION_NAME = "runlog-listen"
#: Events read from the log at once.
READ_BATCH = 1000
#: Delays between attempts to reconnect or read again: from FIRST_DELAY, doubled, at most
#: MAX_DELAY seconds.
FIRST_DELAY = 0.05
MAX_DELAY = 2.0


class Listener:
    """The listening connection and the reader task of one store.

    ``channel`` is the one every commit notifies (``eventstore.postgres.NOTIFY_CHANNEL``);
    ``read_after(position, limit)`` reads the log; ``publish(events)`` hands what was read to
    the store (which drops what it already published); ``published()`` is the last position it
    published; ``covered()`` the last position that needs no read (published, or committed by
    the store itself and about to be published); ``resynced()`` runs after a reconnection's
    read (wakes every subscriber).
    """

    def __init__(
        self,
        url: str,
        *,
        channel: str,
        read_after: Callable[[int, int], Awaitable[list[RecordedEvent]]],
        publish: Callable[[list[RecordedEvent]], None],
        published: Callable[[], int],
        covered: Callable[[], int],
        between_batches: asyncio.Event,
        resynced: Callable[[], None],
    ) -> None:
        self.url = url
        self.channel = channel
        self._read_after = read_after
        self._publish = publish
        self._published = published
        self._covered = covered
        self._between_batches = between_batches
        self._resynced = resynced
        self._look = asyncio.Event()
        # The highest head notified since the last read; a look from the store (a gap, a
        # reconnection) reads whatever it is.
        self._notified_head = 0
        self._must_read = False
        self._resync_pending = False
        self._stopping = False
        self._connection: asyncpg.Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Set while the connection listens (what a test or a benchmark may wait for).
        self.listening = asyncio.Event()
        #: How many times the listening connection was lost and established again.
        self.reconnects = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen_loop(), name="runlog-listen"),
            asyncio.create_task(self._read_loop(), name="runlog-listen-reader"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            # Each loop handles its own errors; whatever escaped was logged by asyncio.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self._drop_connection()

    @property
    def pid(self) -> int | None:
        """The server process id of the listening connection, while it listens."""
        connection = self._connection
        if connection is None or connection.is_closed():
            return None
        return int(connection.get_server_pid())

    def look(self) -> None:
        """Read the log after the last published position soon (coalesced)."""
        self._must_read = True
        self._look.set()

    # -- the listening connection -----------------------------------------------------------

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            head = int(payload)
        except ValueError:
            head = -1
        # A head already published, or one this process committed itself (the writer path
        # publishes it, reading the log first if another process committed before it), needs
        # no read.
        if head < 0:
            self.look()
        elif head > self._covered():
            self._notified_head = max(self._notified_head, head)
            self._look.set()

    async def _listen_loop(self) -> None:
        delay = FIRST_DELAY
        connected_before = False
        while not self._stopping:
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(
                    self.url,
                    timeout=10,
                    server_settings={"application_name": APPLICATION_NAME},
                )
            except Exception as exc:  # the driver's errors are many; every one means "again"
                log.warning("store.listen_failed", error=str(exc) or repr(exc), retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
                continue
            self._connection = connection
            try:
                connection.add_termination_listener(_setter(lost))
                await connection.add_listener(self.channel, self._notified)
            except Exception as exc:
                log.warning("store.listen_failed", error=str(exc) or repr(exc), retry_s=delay)
                await self._drop_connection()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
                continue
            delay = FIRST_DELAY
            # Whatever committed before the LISTEN took effect is read now; after a lost
            # connection every subscriber reads again from its cursor too.
            if connected_before:
                self.reconnects += 1
                self._resync_pending = True
                log.info("store.listen_reconnected", reconnects=self.reconnects)
            connected_before = True
            self.look()
            self.listening.set()
            await lost.wait()
            self.listening.clear()
            await self._drop_connection()
            if not self._stopping:
                log.warning("store.listen_lost", retry_s=delay)
                await asyncio.sleep(delay)

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)
        if connection is not None and not connection.is_closed():
            connection.terminate()

    # -- the reader ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        delay = FIRST_DELAY
        while not self._stopping:
            await self._look.wait()
            self._look.clear()
            must_read, self._must_read = self._must_read, False
            head, self._notified_head = self._notified_head, 0
            if not must_read and not self._resync_pending:
                if head <= self._covered():
                    continue
                # The notification may be of this store's own batch, whose commit the writer
                # thread has not noted yet: once that batch is through, the head is known to
                # be ours (published by the writer path) or another process's (read).
                if not self._between_batches.is_set():
                    await self._between_batches.wait()
                    if head <= self._covered() and not self._must_read:
                        continue
            resync, self._resync_pending = self._resync_pending, False
            try:
                await self._catch_up()
            except StoreClosedError:
                return
            except Exception as exc:
                # The database cannot be read now (a StorageError, or a driver error on a
                # pooled connection that was cut): try again, as no notification may come.
                self._resync_pending = self._resync_pending or resync
                log.warning("store.listen_read_failed", error=str(exc), retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
                self.look()
                continue
            delay = FIRST_DELAY
            if resync:
                self._resynced()

    async def _catch_up(self) -> None:
        while True:
            events = await self._read_after(self._published(), READ_BATCH)
            self._publish(events)
            if len(events) < READ_BATCH:
                return


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    return lambda _connection: event.set()
