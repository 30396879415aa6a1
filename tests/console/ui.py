"""Steps through the console as a person takes them, by the accessible names it promises."""

from __future__ import annotations

import re

from playwright.sync_api import Locator, Page, expect

from tests.durability.server_process import KEY

RUN_URL = re.compile(r"#/runs/([0-9a-f-]{36})$")


def sign_in(page: Page, url: str) -> None:
    page.goto(url + "/")
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("columnheader", name="Status")).to_be_visible()


def start_run(page: Page, content: str, *, persona: str = "", title: str = "console") -> str:
    """A new thread with one message and a run on it, started from the thread page; the
    browser ends on the run's page. Returns the run id."""
    page.get_by_role("link", name="Threads").click()
    page.get_by_label("Title").fill(title)
    page.get_by_role("button", name="Create thread").click()
    page.get_by_label("Message", exact=True).fill(content)
    page.get_by_role("button", name="Send message").click()
    expect(page.locator(".message.user").last).to_contain_text(content.splitlines()[-1])
    if persona:
        page.get_by_label("Persona").fill(persona)
    page.get_by_role("button", name="Start run").click()
    expect(page).to_have_url(RUN_URL)
    match = RUN_URL.search(page.url)
    assert match
    return match.group(1)


def timeline(page: Page) -> Locator:
    return page.get_by_role("log")


def seqs_shown(page: Page) -> list[int]:
    """The seq of every event element in the timeline, in page order."""
    values = (
        timeline(page)
        .locator("[data-seq]")
        .evaluate_all("els => els.map(e => Number(e.dataset.seq))")
    )
    return [int(v) for v in values]


def wait_for_event(page: Page, event_type: str) -> Locator:
    entry = timeline(page).locator(f'[data-type="{event_type}"]')
    expect(entry).to_have_count(1)
    return entry
