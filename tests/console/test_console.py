"""The browser console at ``/``, driven in Chromium by the names it promises: sign in, watch a
run stream, answer it, approve a tool call, cancel it, replay it at any seq."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.console.conftest import DESKTOP, PHONE, Console, Watched, open_page
from tests.console.ui import seqs_shown, sign_in, start_run, timeline, wait_for_event
from tests.durability.server_process import KEY, ROOT

XSS = "<img src=x onerror=alert(1)>"


def test_sign_in_keeps_the_token_in_session_storage_only(
    console: Console, watched_page: tuple[Page, Watched], shots: Any
) -> None:
    page, watched = watched_page
    page.goto(console.url + "/")
    expect(page.get_by_role("heading", name="Sign in to runlog")).to_be_visible()
    shots(page, "sign-in")
    # A wrong key is refused (the browser itself logs the 401 response).
    watched.allowed.append(re.compile(r"status of 401"))
    page.get_by_label("API key").fill("rl_not_a_key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Not accepted")
    assert page.evaluate("sessionStorage.length") == 0

    # By keyboard: the key field has the focus, Enter submits.
    page.get_by_label("API key").fill("")
    page.keyboard.type(KEY)
    page.keyboard.press("Enter")
    expect(page.get_by_role("columnheader", name="Status")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('runlog.token')") == KEY
    assert page.evaluate("localStorage.length") == 0
    assert KEY not in page.url
    # A reload keeps the tab signed in; a new tab (context) does not share it.
    page.reload()
    expect(page.get_by_role("columnheader", name="Status")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_sign_in_with_a_login_and_password(console: Console, page: Page) -> None:
    org_id = console.http.post("/v1/threads", json={}).json()["org_id"]
    created = subprocess.run(
        [
            *(sys.executable, "-m", "runs", "admin", "--db", console.server.db, "create-user"),
            *("--org", org_id, "--name", "alice", "--email", "alice@example.com"),
            *("--password", "s3cret-pass"),
        ],
        cwd=ROOT,
        env=console.server.env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    page.goto(console.url + "/")
    page.get_by_text("Use a login and password instead").click()
    page.get_by_label("Login").fill("alice")
    page.get_by_label("Password").fill("s3cret-pass")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("columnheader", name="Status")).to_be_visible()
    token = page.evaluate("sessionStorage.getItem('runlog.token')")
    assert token
    assert token != KEY
    assert token not in page.url
    page.get_by_role("link", name="Threads").click()
    expect(page.get_by_role("heading", name="Threads")).to_be_visible()
    assert token not in console.server.log.read_text(encoding="utf-8")


def start_api_run(console: Console, content: str, **body: Any) -> str:
    thread = console.http.post("/v1/threads", json={"title": "api"}).json()["id"]
    message = console.http.post(f"/v1/threads/{thread}/messages", json={"content": content})
    assert message.status_code == 201
    created = console.http.post(f"/v1/threads/{thread}/runs", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["run_id"])


def test_the_runs_page_follows_live_runs_filters_and_pages(console: Console, page: Page) -> None:
    sign_in(page, console.url)
    page.evaluate("window.notReloaded = true")
    run_id = start_api_run(console, "/slow 150\n" + "words " * 20)  # 4.5 s: over a refresh
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=run_id[-12:]))
    expect(row.locator(".status")).to_have_text("running")
    expect(row.locator(".status")).to_have_text("completed")
    assert page.evaluate("window.notReloaded") is True

    cancelled = start_api_run(console, "/ask Stay?")
    assert console.http.post(f"/v1/runs/{cancelled}:cancel").status_code == 200
    page.get_by_label("Filter by status").select_option("cancelled")
    expect(page.get_by_role("link", name=cancelled[-12:])).to_be_visible()
    expect(page.get_by_role("link", name=run_id[-12:])).to_have_count(0)
    statuses = page.locator("table.runs tbody .status").all_inner_texts()
    assert statuses
    assert set(statuses) == {"cancelled"}

    page.get_by_label("Filter by status").select_option("")
    for _ in range(26):  # more than a page
        start_api_run(console, "hi")
    expect(page.locator("table.runs tbody tr")).to_have_count(25)
    first = page.locator("table.runs tbody th a").evaluate_all("els => els.map(e => e.title)")
    page.get_by_role("button", name="Older").click()
    expect(page.get_by_role("button", name="Newer")).to_be_enabled()
    expect(page.locator("table.runs tbody th a").first).not_to_have_attribute("title", first[0])
    second = page.locator("table.runs tbody th a").evaluate_all("els => els.map(e => e.title)")
    # Ids are time-ordered: the older page continues right after the first, newest first.
    assert second
    assert not set(first) & set(second)
    assert first + second == sorted(first + second, reverse=True)
    page.get_by_role("button", name="Newer").click()
    expect(page.locator("table.runs tbody th a").first).to_have_attribute("title", first[0])


def test_a_slow_run_shows_text_before_it_completes(console: Console, page: Page) -> None:
    sign_in(page, console.url)
    reply = "streaming words arrive one small piece at a time"
    run_id = start_run(page, f"/slow 60\n{reply}")
    log = timeline(page)
    expect(log.locator(".assistant .text")).to_contain_text("echo: stre")
    # Text is on screen while the run is still going: no terminal event has arrived yet.
    assert log.locator('[data-type="run.completed"]').count() == 0
    assert console.get(f"/v1/runs/{run_id}")["status"] == "running"
    wait_for_event(page, "run.completed")
    expect(log.locator(".assistant .text")).to_have_text(f"echo: {reply}")
    expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    # Every event of the log is in the timeline, once, in order.
    last = console.events(run_id)[-1]["seq"]
    assert seqs_shown(page) == list(range(1, last + 1))


def test_answering_a_question(console: Console, page: Page, shots: Any) -> None:
    sign_in(page, console.url)
    run_id = start_run(page, "/ask Which colour do you like?")
    answer = page.get_by_role("textbox", name="Answer")
    expect(answer).to_be_visible()
    expect(page.get_by_text("Which colour do you like?", exact=True).first).to_be_visible()
    expect(page.locator(".page-head .status")).to_have_text("waiting for input")
    shots(page, "run-waiting-for-answer")
    answer.fill("teal")
    page.get_by_role("button", name="Send", exact=True).click()
    wait_for_event(page, "run.completed")
    expect(timeline(page).locator(".assistant .text").last).to_have_text("you answered: teal")
    expect(answer).to_be_hidden()
    inputs = [e for e in console.events(run_id) if e["type"] == "run.input_provided"]
    assert [e["data"]["content"] for e in inputs] == ["teal"]


def test_approving_a_confirmation(console: Console, page: Page, shots: Any) -> None:
    sign_in(page, console.url)
    run_id = start_run(page, '/tool calculator {"expression": "6*7"}', persona="guarded@1")
    approve = page.get_by_role("button", name="Approve")
    expect(approve).to_be_visible()
    expect(page.get_by_role("button", name="Deny")).to_be_visible()
    shots(page, "run-confirmation")
    approve.click()
    wait_for_event(page, "run.completed")
    expect(timeline(page).locator('[data-type="tool.result"]')).to_contain_text("42")
    expect(timeline(page).locator(".assistant .text").last).to_have_text(
        "tool calculator returned: 42"
    )
    assert console.get(f"/v1/runs/{run_id}")["status"] == "completed"


def test_cancelling_a_slow_run(console: Console, page: Page) -> None:
    sign_in(page, console.url)
    run_id = start_run(page, "/slow 400\n" + "a long answer that takes a while " * 4)
    expect(timeline(page).locator(".assistant .text")).to_contain_text("echo")
    page.get_by_role("button", name="Cancel run").click()
    wait_for_event(page, "run.cancelled")
    expect(page.locator(".page-head .status")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    assert console.get(f"/v1/runs/{run_id}")["status"] == "cancelled"


def test_a_reply_with_markup_is_shown_as_text(
    console: Console, watched_page: tuple[Page, Watched]
) -> None:
    page, watched = watched_page
    sign_in(page, console.url)
    start_run(page, XSS)
    wait_for_event(page, "run.completed")
    expect(timeline(page).locator(".assistant .text")).to_have_text(f"echo: {XSS}")
    assert timeline(page).locator("img").count() == 0
    # The thread shows both messages as text too.
    page.locator(".details").get_by_role("link").click()  # the run's thread
    expect(page.locator(".message.assistant .text")).to_have_text(f"echo: {XSS}")
    expect(page.locator(".message.user .text")).to_have_text(XSS)
    assert page.locator("main img").count() == 0
    assert watched.dialogs == []


def test_replay_slider_shows_the_run_as_of_a_seq(console: Console, page: Page, shots: Any) -> None:
    sign_in(page, console.url)
    run_id = start_run(page, "/ask Ready?")
    page.get_by_role("textbox", name="Answer").fill("yes")
    page.get_by_role("button", name="Send", exact=True).click()
    wait_for_event(page, "run.completed")
    events = console.events(run_id)
    waiting = next(e["seq"] for e in events if e["type"] == "run.waiting_for_input")
    then = console.get(f"/v1/runs/{run_id}", as_of_seq=waiting)
    assert then["status"] == "waiting_for_input"  # not the run's final status

    slider = page.get_by_role("slider", name="Replay to seq")
    slider.fill(str(waiting))
    status = page.locator("#replay-status")
    expect(status).to_contain_text(f"At seq {waiting}: waiting for input")
    expect(status).to_have_attribute("data-status", then["status"])
    assert seqs_shown_visible(page) == list(range(1, waiting + 1))
    shots(page, "run-replay")
    # The keyboard moves it too: one step right is the next seq.
    slider.focus()
    page.keyboard.press("ArrowRight")
    after = console.get(f"/v1/runs/{run_id}", as_of_seq=waiting + 1)
    expect(status).to_have_attribute("data-status", after["status"])
    expect(status).to_contain_text(f"At seq {waiting + 1}:")
    page.get_by_role("button", name="Back to live").click()
    assert seqs_shown_visible(page) == list(range(1, events[-1]["seq"] + 1))


def seqs_shown_visible(page: Page) -> list[int]:
    values = (
        timeline(page)
        .locator("[data-seq]")
        .evaluate_all("els => els.filter(e => e.checkVisibility()).map(e => Number(e.dataset.seq))")
    )
    return [int(v) for v in values]


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_every_page_fits_the_viewport(
    console: Console, browser: Any, viewport: dict[str, int], shots: Any
) -> None:
    page, watched = open_page(browser, viewport)
    name = "desktop" if viewport == DESKTOP else "phone"
    try:
        page.goto(console.url + "/")
        expect(page.get_by_label("API key")).to_be_visible()
        pages = [("sign-in", None)]
        shots(page, f"{name}-sign-in")
        sign_in(page, console.url)
        run_id = start_run(page, '/tool calculator {"expression": "2+3"}\nadd them', title="sums")
        wait_for_event(page, "run.completed")
        thread_id = console.get(f"/v1/runs/{run_id}")["thread_id"]
        for label, hash_ in [
            ("runs", "#/runs"),
            ("run", f"#/runs/{run_id}"),
            ("threads", "#/threads"),
            ("thread", f"#/threads/{thread_id}"),
        ]:
            page.goto(f"{console.url}/{hash_}")
            expect(page.locator("main h1")).to_be_visible()
            if label == "run":
                wait_for_event(page, "run.completed")
            if label == "thread":
                expect(page.locator(".message.assistant")).to_have_count(1)
            pages.append((label, hash_))
            shots(page, f"{name}-{label}")
            # Nothing is wider than the screen: wide tables scroll inside their own box.
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, (label, overflow)
        assert len(pages) == 5
    finally:
        page.context.close()
    assert not watched.unexpected(), watched.unexpected()
    assert not watched.dialogs


def test_a_failed_run_shows_its_error(console: Console, page: Page) -> None:
    sign_in(page, console.url)
    run_id = start_run(page, "/fail")
    failed = wait_for_event(page, "run.failed")
    run = console.get(f"/v1/runs/{run_id}")
    assert run["status"] == "failed"
    expect(failed).to_contain_text(f"{run['error_class']}: {run['error_message']}")
    expect(page.locator(".error-box")).to_have_text(f"{run['error_class']}: {run['error_message']}")
    expect(page.locator(".page-head .status")).to_have_text("failed")
