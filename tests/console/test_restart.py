"""The console follows a run across a server restart: the stream drops, the page reconnects
with ``after_seq`` set to the last id it saw, and the timeline ends with every event once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import Page, Request, expect

from tests.console.conftest import Console, Watched, run_async
from tests.console.ui import seqs_shown, sign_in, start_run, timeline, wait_for_event

LONG = " ".join(f"word{i}" for i in range(30))


@pytest.fixture
def own_console(console: Console) -> Iterator[Console]:
    """The session's server, which this test kills and starts again (same file, same port);
    it is running again afterwards whatever happened."""
    try:
        yield console
    finally:
        if console.server.process is None or console.server.process.poll() is not None:
            run_async(console.server.start())


def test_the_timeline_survives_a_server_restart_without_gap_or_duplicate(
    own_console: Console, watched_page: tuple[Page, Watched], shots: object
) -> None:
    page, watched = watched_page
    # While the server is down Chromium itself logs each refused or cut connection.
    watched.allowed.append(re.compile(r"net::ERR_|Failed to load resource|Failed to fetch"))
    streams: list[str] = []

    def on_request(request: Request) -> None:
        if request.url.split("?")[0].endswith("/events"):
            streams.append(request.url)
            assert "Authorization" in request.headers or "authorization" in request.headers

    page.on("request", on_request)
    sign_in(page, own_console.url)
    run_id = start_run(page, f"/slow 40\n{LONG}")
    text = timeline(page).locator(".assistant .text").first
    expect(text).to_contain_text("word2")
    own_console.server.kill()  # SIGKILL mid-stream
    expect(page.locator(".connection")).to_have_attribute("data-state", "reconnecting")
    before_restart = seqs_shown(page)
    run_async(own_console.server.start())  # same file, same port: the run resumes

    wait_for_event(page, "run.completed")
    events = own_console.events(run_id)
    assert "run.resumed" in [e["type"] for e in events]
    # Every event of the log, once, in order — also those written while the page was away.
    assert seqs_shown(page) == [e["seq"] for e in events] == list(range(1, len(events) + 1))
    # The reconnect asked for what came after the last event the page had shown.
    cursors = [int(parse_qs(urlparse(url).query)["after_seq"][0]) for url in streams]
    assert cursors[0] == 0
    assert max(before_restart) in cursors[1:]
    # The answer was finished after the restart: the cut call is marked as replaced.
    retried = [e["data"]["discarded_call"] for e in events if e["type"] == "run.retried"]
    assert retried, [e["type"] for e in events]
    replaced = timeline(page).locator(".assistant.replaced")
    expect(replaced).to_have_count(len(retried))
    assert replaced.evaluate_all("els => els.map(e => Number(e.dataset.call))") == retried
    expect(timeline(page).locator(".assistant:not(.replaced) .text").last).to_have_text(
        f"echo: {LONG}"
    )
    shots(page, "run-after-restart")
