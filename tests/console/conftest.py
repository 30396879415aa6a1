"""Fixtures for the console's browser tests: Debian's Chromium driven by Playwright, against
the real server in a subprocess (the same one the durability tests start).

One browser per module and one server for the whole session (tests make their own threads and
runs, so they do not see each other's); each test gets a fresh browser context (its own
sessionStorage) and fails if the page logged an error or opened a dialog.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, expect, sync_playwright

from tests.durability.server_process import KEY, ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
#: A persona whose calculator calls wait for the user's confirmation.
CONFIRM_PERSONA = (
    'key = "guarded"\nversion = 1\nsystem_prompt = "test"\n'
    'tools = ["calculator", "ask_user"]\nconfirm_tools = ["calculator"]\nmax_iterations = 5\n'
)

expect.set_options(timeout=15_000)


class Console:
    """A server for the browser: its URL, and an API client for setting up and checking."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.url = server.url
        self.http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
        )

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's events as the log holds them (SSE with follow=0)."""
        import json

        response = self.http.get(f"/v1/runs/{run_id}/events", params={"follow": "0"})
        assert response.status_code == 200
        return [
            json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")
        ]


def run_async(coroutine: Any) -> Any:
    """Run a coroutine to its end from sync code. Playwright's sync API keeps an event loop
    of its own on this thread, so the coroutine gets a thread of its own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def start_server(tmp: Path) -> ServerProcess:
    server = ServerProcess(tmp)
    (tmp / "personas" / "guarded@1.toml").write_text(CONFIRM_PERSONA)
    run_async(server.start())
    return server


def stop_server(server: ServerProcess) -> None:
    if server.process is not None and server.process.poll() is None:
        server.terminate()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module scope: while Playwright's sync API is open it keeps an event loop running on this
    # thread, which the asyncio tests of later modules could not start theirs under.
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    server = start_server(tmp_path_factory.mktemp("console"))
    console = Console(server)
    try:
        yield console
    finally:
        console.http.close()
        stop_server(server)


class Watched:
    """What a page reported: console errors, uncaught exceptions, dialogs."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.urls: list[str] = []
        #: Console errors matching these are expected by the test (e.g. a refused connection
        #: while the server restarts, which Chromium itself logs).
        self.allowed: list[re.Pattern[str]] = []

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} ({message.location})")

    def on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]


def open_page(browser: Browser, viewport: dict[str, int]) -> tuple[Page, Watched]:
    context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    page = context.new_page()
    watched = Watched()
    page.on("console", watched.on_console)
    page.on("pageerror", lambda error: watched.errors.append(f"pageerror: {error}"))
    page.on("dialog", watched.on_dialog)
    page.on("request", lambda request: watched.urls.append(request.url))
    return page, watched


@pytest.fixture
def watched_page(
    browser: Browser, request: pytest.FixtureRequest
) -> Iterator[tuple[Page, Watched]]:
    viewport = getattr(request, "param", DESKTOP)
    page, watched = open_page(browser, viewport)
    try:
        yield page, watched
    finally:
        page.context.close()
    assert not watched.dialogs, watched.dialogs
    assert not watched.unexpected(), watched.unexpected()
    # The token travels in a header only, never in a URL.
    assert not [url for url in watched.urls if KEY in url]


@pytest.fixture
def page(watched_page: tuple[Page, Watched]) -> Page:
    return watched_page[0]


@pytest.fixture
def shots(tmp_path: Path) -> Any:
    """``shots(page, name)``: a full-page screenshot in the test's tmp dir (and, when
    ``RUNLOG_CONSOLE_SHOTS`` names a folder, a copy there to look at)."""
    copy_to = os.environ.get("RUNLOG_CONSOLE_SHOTS")

    def take(page: Page, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        if copy_to:
            Path(copy_to).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(copy_to) / path.name)
        return path

    return take
