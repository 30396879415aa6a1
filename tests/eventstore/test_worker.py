"""The writer's thread (eventstore.worker.WorkerThread): calls run one at a time, in order, off
the event loop, and each outcome comes back to the caller."""

from __future__ import annotations

import asyncio
import threading

import pytest

from eventstore.worker import WorkerThread


async def test_calls_run_in_order_on_one_thread_that_is_not_the_loops() -> None:
    worker = WorkerThread("runlog-writer-test")
    seen: list[tuple[int, str]] = []

    def note(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i * i

    try:
        futures = [worker.call(note, i) for i in range(50)]
        assert await asyncio.gather(*futures) == [i * i for i in range(50)]
    finally:
        worker.stop()
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"runlog-writer-test"}
    assert threading.current_thread().name != "runlog-writer-test"


async def test_a_calls_exception_reaches_its_caller_and_the_thread_goes_on() -> None:
    worker = WorkerThread("runlog-writer-test")
    error = ValueError("the disk is full")

    def fail() -> None:
        raise error

    try:
        with pytest.raises(ValueError) as raised:
            await worker.call(fail)
        assert raised.value is error
        assert await worker.call(lambda: "still here") == "still here"
    finally:
        worker.stop()


async def test_a_call_cancelled_before_it_starts_is_not_run_and_a_started_one_ends() -> None:
    worker = WorkerThread("runlog-writer-test")
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def first() -> None:
        started.set()
        release.wait(10)
        ran.append("first")

    try:
        running = worker.call(first)
        assert await asyncio.to_thread(started.wait, 10)
        queued = worker.call(ran.append, "second")
        anyway = worker.call_anyway(ran.append, "second anyway")
        running.cancel()  # already running: it goes on
        queued.cancel()  # not started: skipped
        anyway.cancel()  # not started, but handed over to run whatever becomes of its caller
        release.set()
        assert await worker.call(ran.append, "third") is None
    finally:
        worker.stop()
    assert ran == ["first", "second anyway", "third"]


async def test_stop_lets_queued_calls_finish_then_refuses_new_ones() -> None:
    worker = WorkerThread("runlog-writer-test")
    ran: list[int] = []
    futures = [worker.call(ran.append, i) for i in range(20)]
    worker.stop()
    assert ran == list(range(20))
    assert not any(t.name == "runlog-writer-test" for t in threading.enumerate())
    await asyncio.gather(*futures)  # each was settled on the loop
    with pytest.raises(RuntimeError):
        worker.call(ran.append, 99)


def test_a_call_whose_loop_closed_does_not_end_the_thread() -> None:
    worker = WorkerThread("runlog-writer-test")
    release = threading.Event()
    gone = asyncio.new_event_loop()

    async def hand_over() -> None:
        worker.call(release.wait, 10)

    gone.run_until_complete(hand_over())
    gone.close()  # the call's answer has nowhere to go
    release.set()

    async def again() -> str:
        return await worker.call(lambda: "answered")

    try:
        assert asyncio.run(again()) == "answered"
    finally:
        worker.stop()
