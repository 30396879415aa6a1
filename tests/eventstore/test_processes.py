"""Other processes: a writer killed mid-append, and several writers on one log (a SQLite file, a
PostgreSQL database)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections import defaultdict
from pathlib import Path

import msgspec
import pytest

from eventstore import NewEvent, RecordedEvent, SQLiteEventStore, open_event_store


class Child:
    """A ``child_writer.py`` process, read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.positions: list[tuple[int, str, int]] = []

    @classmethod
    async def start(
        cls, cmd: list[str], env: dict[str, str], db_path: Path | str, args: str
    ) -> Child:
        """Start ``child_writer.py db_path *args.split()`` and wait until its store is open."""
        process = await asyncio.create_subprocess_exec(
            *cmd,
            str(db_path),
            *args.split(),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        child = cls(process)
        assert await child.line() == "ready", await child.stderr()
        return child

    async def line(self) -> str:
        assert self.process.stdout is not None
        return (await self.process.stdout.readline()).decode().strip()

    async def stderr(self) -> str:
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode()

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    def record(self, line: str) -> None:
        _, position, stream, seq = line.split()
        self.positions.append((int(position), stream, int(seq)))

    async def read_until(self, count: int) -> None:
        while len(self.positions) < count:
            line = await self.line()
            assert line.startswith("pos "), (line, await self.stderr())
            self.record(line)

    async def finish(self) -> None:
        """Read every remaining line and wait for the exit; the child must succeed."""
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode().strip()
            if line.startswith("pos "):
                self.record(line)
            else:
                assert line == "done", line
        assert await self.process.wait() == 0, await self.stderr()


async def read_log(location: Path | str) -> list[RecordedEvent]:
    store = await open_event_store(str(location))
    try:
        report = await store.verify()
        assert report.ok, report
        log = await store.read_all(0, 1_000_000)
        assert report.events == len(log)
        return log
    finally:
        await store.close()


def assert_gapless(log: list[RecordedEvent]) -> dict[str, list[int]]:
    assert [e.position for e in log] == list(range(1, len(log) + 1))
    seqs: dict[str, list[int]] = defaultdict(list)
    for event in log:
        seqs[event.stream].append(event.seq)
    for stream, stream_seqs in seqs.items():
        assert stream_seqs == list(range(1, len(stream_seqs) + 1)), stream
    return seqs


def assert_present(log: list[RecordedEvent], positions: list[tuple[int, str, int]]) -> None:
    assert len(set(positions)) == len(positions)
    by_position = {e.position: (e.position, e.stream, e.seq) for e in log}
    missing = [p for p in positions if by_position.get(p[0]) != p]
    assert not missing, f"acknowledged but not in the log: {missing[:10]}"


@pytest.mark.parametrize("acknowledged", [1, 200, 1500])
async def test_killed_writer_loses_no_acknowledged_event(
    log_location: str, child_writer_cmd: list[str], child_env: dict[str, str], acknowledged: int
) -> None:
    db_path = log_location
    # Several tasks with multi-event appends, so that batches are in flight at the kill.
    child = await Child.start(
        child_writer_cmd,
        child_env,
        db_path,
        "--count 0 --tasks 4 --batch 3 --shared shared --shared-every 2",
    )
    async with asyncio.timeout(60):
        await child.read_until(acknowledged)
        child.process.send_signal(signal.SIGKILL)
        # Lines already in the pipe were also printed after their append returned.
        assert child.process.stdout is not None
        async for raw in child.process.stdout:
            line = raw.decode().strip()
            if line.startswith("pos "):
                child.record(line)
        assert await child.process.wait() == -signal.SIGKILL

    log = await read_log(db_path)

    assert_gapless(log)
    assert_present(log, child.positions)
    assert len(log) >= len(child.positions) >= acknowledged
    # The store opens and appends at the end of the surviving chain.
    store = await open_event_store(db_path)
    try:
        [event] = await store.append("after-crash", [NewEvent("T", b"{}")], 0)
        assert event.position == len(log) + 1
        assert (await store.verify()).ok
    finally:
        await store.close()


async def test_two_processes_append_to_one_log(
    log_location: str, child_writer_cmd: list[str], child_env: dict[str, str]
) -> None:
    db_path = log_location
    count = 300
    children = [
        await Child.start(
            child_writer_cmd,
            child_env,
            db_path,
            # The pause leaves the write lock free between appends. Without it one process
            # can commit back to back while the other sleeps in SQLite's busy wait, and
            # finish before the other's first shared append (the check at the end).
            f"--stream {name} --count {count} --shared shared --shared-every 3 --wait-go"
            " --pause 0.001",
        )
        for name in ("p1", "p2")
    ]
    async with asyncio.timeout(120):
        for child in children:
            child.go()
        await asyncio.gather(*(child.finish() for child in children))

    log = await read_log(db_path)

    seqs = assert_gapless(log)
    assert len(log) == 2 * count
    assert {stream: len(s) for stream, s in seqs.items()} == {"p1": 200, "p2": 200, "shared": 200}
    for child in children:
        assert len(child.positions) == count
        assert_present(log, child.positions)
    # The two writers really interleaved (otherwise this test proves little).
    shared_writers = [msgspec.json.decode(e.data)["writer"] for e in log if e.stream == "shared"]
    switches = sum(a != b for a, b in itertools.pairwise(shared_writers))
    print("SWITCHES", switches)
    assert switches > 1


async def test_open_store_and_another_process_append_together(
    log_location: str, child_writer_cmd: list[str], child_env: dict[str, str]
) -> None:
    """The server (this process) keeps appending while the admin CLI (a child) writes."""
    count = 300
    db_path = log_location
    store = await open_event_store(db_path)
    try:
        await store.append("shared", [NewEvent("Server", b"{}")], 0)  # warm the seq cache
        child = await Child.start(
            child_writer_cmd,
            child_env,
            db_path,
            f"--stream cli --count {count} --shared shared --shared-every 3 --wait-go",
        )

        async def server_appends() -> list[RecordedEvent]:
            recorded: list[RecordedEvent] = []
            own_seq = 0
            for i in range(count):
                payload = msgspec.json.encode({"writer": "server", "i": i})
                if i % 3 == 0:
                    recorded += await store.append("shared", [NewEvent("Server", payload)])
                else:
                    events = await store.append("server", [NewEvent("Server", payload)], own_seq)
                    own_seq = events[-1].seq
                    recorded += events
            return recorded

        async with asyncio.timeout(120):
            child.go()
            server_events, _ = await asyncio.gather(server_appends(), child.finish())

        # After the child's writes, an exact expected_seq on the shared stream still works.
        last = await store.last_seq("shared")
        [final] = await store.append("shared", [NewEvent("Server", b"{}")], last)
        assert final.seq == last + 1
        assert (await store.verify()).ok
    finally:
        await store.close()

    log = await read_log(db_path)
    seqs = assert_gapless(log)
    assert len(log) == 1 + 2 * count + 1
    assert len(seqs["shared"]) == 1 + 100 + 100 + 1
    assert_present(log, child.positions)
    assert_present(log, [(e.position, e.stream, e.seq) for e in server_events])


async def test_subscriber_sees_events_appended_by_another_process(
    db_path: Path, child_writer_cmd: list[str], child_env: dict[str, str]
) -> None:
    store = await SQLiteEventStore.open(str(db_path))
    try:
        async with contextlib.aclosing(store.subscribe("cli", 0)) as events:
            first = asyncio.ensure_future(anext(events))
            try:
                child = await Child.start(
                    child_writer_cmd, child_env, db_path, "--stream cli --count 3"
                )
                await child.finish()
                async with asyncio.timeout(3):
                    received = [await first, await anext(events), await anext(events)]
            finally:
                first.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await first
        assert [e.seq for e in received] == [1, 2, 3]
    finally:
        await store.close()
