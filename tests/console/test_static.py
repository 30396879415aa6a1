"""How the console is served: security headers, only its own files, no inline script, text
only ever set as text; and its SSE parser against the rules of the HTML standard."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

from tests.console.conftest import Console

FILES = Path(__file__).resolve().parents[2] / "runs" / "console"


def test_console_responses_carry_a_strict_policy(console: Console) -> None:
    for path, kind in [
        ("/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/style.css", "text/css"),
    ]:
        response = console.http.get(path, headers={"Authorization": ""})
        assert response.status_code == 200, path
        assert response.headers["Content-Type"].startswith(kind)
        policy = response.headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["script-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe-inline" not in policy
        assert "unsafe-eval" not in policy
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Trace-Id"]
    missing = console.http.get("/console/nothing.js")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    assert console.http.get("/console/..%2Fconsole.py").status_code == 404


def test_the_console_loads_nothing_from_elsewhere_and_writes_no_markup() -> None:
    html = (FILES / "index.html").read_text(encoding="utf-8")
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="/console/app.js">']
    assert "style=" not in html
    for path in FILES.iterdir():
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text, path.name
        assert "https://" not in text, path.name
        if path.suffix == ".js":
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
                assert sink not in text, (path.name, sink)


#: (chunks as they arrive, the messages an SSE parser must produce: (data, last event id)).
CASES: list[tuple[list[str], list[list[str]]]] = [
    (["id: 1\ndata: a\n\n"], [["a", "1"]]),
    # CRLF, lone CR and LF line ends, also split between chunks.
    (["id: 2\r", "\ndata: b\r\rdata: c\r\n", "\r\n"], [["b", "2"], ["c", "2"]]),
    # Comments are ignored; several data lines join with LF; one leading space is dropped.
    ([": ping\n\ndata:x\ndata:  y\n\n"], [["x\n y", ""]]),
    # The id persists to later events; an id with NUL is ignored; no data: no event.
    (["id: 7\n\ndata: d\n\nid: 8\0\ndata: e\n\n"], [["d", "7"], ["e", "7"]]),
    # A byte-order mark at the start; a field without a colon; an unfinished event is held.
    (["\ufeffdata\n\ndata: f", "g\n", "\n", "data: never"], [["", ""], ["fg", ""]]),
]


def test_sse_parser_follows_the_standard(console: Console, page: Page) -> None:
    page.goto(console.url + "/")
    results: Any = page.evaluate(
        """async (cases) => {
            const { SseParser } = await import("/console/sse.js");
            return cases.map(([chunks]) => {
                const seen = [];
                const parser = new SseParser((m) => seen.push([m.data, m.lastEventId]));
                for (const chunk of chunks) parser.push(chunk);
                return seen;
            });
        }""",
        [[chunks] for chunks, _ in CASES],
    )
    assert results == [expected for _, expected in CASES]
