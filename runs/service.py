"""Commands of the service: read, decide, append (guarded by ``expected_seq``), retry on
conflict. The HTTP handlers and the admin CLI call these; nothing else writes the log."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

from eventstore import AppendRefused, AppendRequest, ConcurrencyError, EventStore, RecordedEvent
from projections.queries import Queries
from projections.runs import live_runs_below
from runs.auth import hash_password, key_sha256, new_api_key
from runs.errors import Conflict, NotFound, RateLimited
from runs.events import (
    ApiKeyCreated,
    ApiKeyRevoked,
    MessageAdded,
    OrgCreated,
    RunStarted,
    ThreadCreated,
    ThreadRunStarted,
    UserCreated,
    UserDeleted,
    encode_event,
    org_stream,
    run_stream,
    thread_stream,
)
from runs.ids import new_id
from runs.personas import PersonaRegistry
from runs.repository import append_decided, load_run
from runs.routes import RouteTable
from runs.run import TERMINAL_STATUSES, RunState, decide_input
from runs.supervisor import Supervisor

__all__ = ["Accounts", "Principal", "RunService"]

_CONFLICT_RETRIES = 20
#: A run may be retried when it ended without an answer.
RETRYABLE_STATUSES = frozenset({"failed", "cancelled"})


class Principal:
    """Who is calling: a user of an org, through an API key (``key_id``) or an access token
    (``expires_at``, Unix seconds). Long-lived responses (SSE) watch the credential with it."""

    __slots__ = ("expires_at", "key_id", "org_id", "user_id")

    def __init__(
        self,
        user_id: str,
        org_id: str,
        *,
        key_id: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        self.user_id = user_id
        self.org_id = org_id
        self.key_id = key_id
        self.expires_at = expires_at


class Accounts:
    """Orgs, users and keys: used by the admin CLI and the first-start bootstrap."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.queries = Queries(store)

    async def create_org(self, name: str) -> str:
        org_id = new_id()
        event = OrgCreated(org_id=org_id, name=name)
        await self.store.append(org_stream(org_id), [encode_event(event)], 0)
        return org_id

    async def create_user(
        self, org_id: str, name: str, email: str, password: str | None = None
    ) -> str:
        if await self.queries.org(org_id) is None:
            raise NotFound(f"org {org_id} does not exist")
        if await self.queries.name_or_email_taken(name, email):
            raise Conflict(
                "a user with that name or email already exists", code="validation.user_exists"
            )
        user_id = new_id()
        password_hash = await asyncio.to_thread(hash_password, password) if password else None
        event = UserCreated(
            user_id=user_id, org_id=org_id, name=name, email=email, password_hash=password_hash
        )
        await self.store.append(org_stream(org_id), [encode_event(event)])
        return user_id

    async def create_key(self, user_id: str, key: str | None = None) -> tuple[str, str]:
        """A new API key for the user: ``(key_id, key)``. The key is never stored."""
        user = await self.queries.user(user_id)
        if user is None or user["deleted_at"] is not None:
            raise NotFound(f"user {user_id} does not exist")
        key = key or new_api_key()
        key_id = new_id()
        event = ApiKeyCreated(
            key_id=key_id, org_id=user["org_id"], user_id=user_id, key_sha256=key_sha256(key)
        )
        await self.store.append(org_stream(user["org_id"]), [encode_event(event)])
        return key_id, key

    async def delete_user(self, user_id: str) -> None:
        """Delete a user: their keys and access tokens stop working at once."""
        user = await self.queries.user(user_id)
        if user is None or user["deleted_at"] is not None:
            raise NotFound(f"user {user_id} does not exist")
        event = UserDeleted(user_id=user_id)
        await self.store.append(org_stream(user["org_id"]), [encode_event(event)])

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; False when there is no such live key."""
        keys = {k["key_id"]: k for k in await self.queries.api_keys()}
        key = keys.get(key_id)
        if key is None:
            raise NotFound(f"API key {key_id} does not exist")
        if key["revoked_at"] is not None:
            return False
        event = ApiKeyRevoked(key_id=key_id)
        await self.store.append(org_stream(key["org_id"]), [encode_event(event)])
        return True


class RunService:
    def __init__(
        self,
        *,
        store: EventStore,
        queries: Queries,
        supervisor: Supervisor,
        routes: RouteTable,
        personas: PersonaRegistry,
        max_live_runs_per_org: int,
    ) -> None:
        self.store = store
        self.queries = queries
        self.supervisor = supervisor
        self.routes = routes
        self.personas = personas
        self.max_live_runs_per_org = max_live_runs_per_org
        # The early checks of run creation take turns per org, so this process does not
        # send more starts than the limit lets through; what decides is the cap counted in the
        # append transaction (exact across processes), and the thread's expected seq.
        self._org_locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )
        #: Threads whose run's ``run.started`` is being appended.
        self._creating: dict[str, asyncio.Event] = {}

    async def create_thread(
        self, who: Principal, title: str | None
    ) -> tuple[ThreadCreated, RecordedEvent]:
        """A new thread: its ``thread.created``, and that event as the log recorded it."""
        thread_id = new_id()
        event = ThreadCreated(
            thread_id=thread_id, org_id=who.org_id, created_by_user_id=who.user_id, title=title
        )
        [recorded] = await self.store.append(thread_stream(thread_id), [encode_event(event)], 0)
        return event, recorded

    async def add_message(
        self, who: Principal, thread_id: str, content: str
    ) -> tuple[MessageAdded, RecordedEvent]:
        """A user's message on the thread: its ``message.added``, and that event as the log
        recorded it."""
        if not await self.queries.thread_exists(who.org_id, thread_id):
            raise NotFound("thread not found")
        message_id = new_id()
        event = MessageAdded(
            message_id=message_id,
            thread_id=thread_id,
            org_id=who.org_id,
            role="user",
            content=content,
            created_by_user_id=who.user_id,
        )
        [recorded] = await self.store.append(thread_stream(thread_id), [encode_event(event)])
        return event, recorded

    async def create_run(
        self,
        who: Principal,
        thread_id: str,
        route_id: str | None,
        persona_id: str | None,
        trace_id: str,
    ) -> str:
        thread = await self.queries.thread(who.org_id, thread_id)
        if thread is None:
            raise NotFound("thread not found")
        return await self._start_run(who, thread_id, route_id, persona_id, trace_id, thread=thread)

    async def retry_run(self, who: Principal, run_id: str, trace_id: str) -> str:
        """A new run on the same thread, route and persona that answers the same user turn
        as ``run_id``, a failed or cancelled run that is still the thread's last word. Its
        partial output was never a thread message, so the new run does not see it."""
        old = await self.queries.run(who.org_id, run_id)
        if old is None:
            raise NotFound("run not found")
        first = await self.store.read_stream(run_stream(run_id), 0, 1)
        started_at = first[0].position

        async def still_retryable(thread: dict[str, Any]) -> None:
            run = await self.queries.run(who.org_id, run_id)
            assert run is not None
            if run["status"] not in RETRYABLE_STATUSES:
                raise Conflict(
                    f"the run is {run['status']}: only a failed or cancelled run can be retried",
                    code="runs.not_retryable",
                    status=run["status"],
                )
            [latest] = await self.queries.thread_runs(thread["id"], 1)
            if latest["run_id"] != run_id:
                raise Conflict(
                    "the run is not the thread's latest: only the latest run can be retried",
                    code="runs.not_latest",
                    latest_run_id=latest["run_id"],
                )
            if await self.queries.last_message_position(thread["id"]) > started_at:
                raise Conflict(
                    "the thread has messages after this run: it is no longer the latest turn",
                    code="runs.not_latest",
                )

        return await self._start_run(
            who,
            old["thread_id"],
            old["route_id"],
            old["persona_id"],
            trace_id,
            retry_of=run_id,
            check=still_retryable,
        )

    async def _start_run(
        self,
        who: Principal,
        thread_id: str,
        route_id: str | None,
        persona_id: str | None,
        trace_id: str,
        *,
        retry_of: str | None = None,
        check: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        thread: dict[str, Any] | None = None,
    ) -> str:
        """``run.started`` with ``thread.run_started``, guarded by the thread's seq: ``check``
        (and the limits) are decided again on each attempt, against the thread as it is.
        ``thread``, the thread's row if the caller just read it, serves the first attempt (the
        append's guard refuses it if the thread moved on since).

        Both limits are decided in the append transaction, so they hold across processes: one
        live run per thread by the thread's expected seq, the org's cap on live runs by a
        cap the writer counts with the head locked (``live_runs_below``); the reads here
        only answer early. The run's lease is taken before the run exists, so no other
        process can take a run that has just started for one whose driver died."""
        route = self.routes.resolve(route_id)
        persona = self.personas.resolve(persona_id)
        run_id = new_id()
        started = RunStarted(
            run_id=run_id,
            thread_id=thread_id,
            org_id=who.org_id,
            created_by_user_id=who.user_id,
            trace_id=trace_id,
            route_id=route.id,
            provider=route.provider,
            model=route.model,
            persona_id=persona.persona_id,
            credits_multiplier=route.credits_multiplier,
            retry_of=retry_of,
            process=self.supervisor.process,
        )
        await self.supervisor.claim(run_id)  # a new id: nobody else can hold it
        appended = False
        try:
            events = await self._append_run(who, thread_id, started, check, thread)
            appended = True
        finally:
            if not appended:
                await self.supervisor.unclaim(run_id)
        self.supervisor.launch(run_id, leased=True, events=events)
        return run_id

    async def _append_run(
        self,
        who: Principal,
        thread_id: str,
        started: RunStarted,
        check: Callable[[dict[str, Any]], Awaitable[None]] | None,
        thread: dict[str, Any] | None,
    ) -> list[RecordedEvent]:
        """Append the run's start; the run's events as recorded (its ``run.started``)."""
        org_id = who.org_id
        limit = self.max_live_runs_per_org
        for _ in range(_CONFLICT_RETRIES):
            # The checks run one at a time per org; the append does not hold the lock, so
            # creations on several threads share commits. The org's limit is not read here:
            # the append's cap, counted by the writer, refuses the run (runs being appended
            # meanwhile are counted there, never twice), and a refused append writes nothing.
            # Another creation on the same thread waits for this append before it looks at
            # the thread.
            async with self._org_locks[org_id]:
                while (creating := self._creating.get(thread_id)) is not None:
                    await creating.wait()
                    thread = None  # it moved on meanwhile
                if thread is None:
                    thread = await self.queries.thread(org_id, thread_id)
                assert thread is not None
                if check is not None:
                    await check(thread)
                active = thread["active_run_id"]
                if active is not None:
                    status = await self.queries.run_status(active, org_id)
                    if status is not None and status not in TERMINAL_STATUSES:
                        raise Conflict(
                            "the thread already has a run that has not finished",
                            code="runs.thread_busy",
                            active_run_id=active,
                        )
                appending = self._creating[thread_id] = asyncio.Event()
            try:
                recorded = await self.store.append_many(
                    [
                        AppendRequest(
                            thread_stream(thread_id),
                            [encode_event(ThreadRunStarted(run_id=started.run_id))],
                            thread["version"],
                        ),
                        AppendRequest(
                            run_stream(started.run_id),
                            [encode_event(started)],
                            0,
                            cap=live_runs_below(org_id, limit),
                        ),
                    ]
                )
            except ConcurrencyError:
                thread = None
                continue  # the thread moved on (a message, another run): look again
            except AppendRefused as exc:
                # Other processes' runs filled the org's last places meanwhile.
                counted = exc.details.get("count")
                raise _limit_exceeded(
                    counted if isinstance(counted, int) else limit, limit
                ) from None
            finally:
                del self._creating[thread_id]
                appending.set()
            stream = run_stream(started.run_id)
            return [event for event in recorded if event.stream == stream]
        raise Conflict("the thread is too busy, try again", code="runs.thread_busy")

    async def cancel_run(self, who: Principal, run_id: str) -> RunState:
        """Cancel the run (a finished run is left alone); the run as the log then has it."""
        if await self.queries.run(who.org_id, run_id) is None:
            raise NotFound("run not found")
        await self.supervisor.cancel(run_id, who.user_id)
        state = await load_run(self.store, run_id)
        assert state is not None
        return state

    async def submit_input(self, who: Principal, run_id: str, content: str) -> None:
        if await self.queries.run(who.org_id, run_id) is None:
            raise NotFound("run not found")
        # The lease first, so no other process takes the run for one to take over once the
        # input makes it runnable. A process whose task is still finishing the step that
        # asked may hold it: that process continues the run when its task ends.
        leased = await self.supervisor.claim(run_id)
        # A concurrent answer (or cancel) makes this fold again, and decide_input then refuses
        # with runs.not_waiting_for_input.
        appended: list[Any] = []
        try:
            appended = await append_decided(
                self.store, run_id, lambda state: decide_input(state, content, who.user_id)
            )
        finally:
            if leased and not appended and run_id not in self.supervisor.tasks:
                await self.supervisor.unclaim(run_id)
        if not appended:
            raise Conflict("the run is too busy, try again", code="runs.conflict")
        if leased:
            self.supervisor.launch(run_id, leased=True)


def _limit_exceeded(live: int, limit: int) -> RateLimited:
    return RateLimited(
        f"the org has {live} live runs; the limit is {limit}",
        code="runs.limit_exceeded",
        limit=limit,
    )
