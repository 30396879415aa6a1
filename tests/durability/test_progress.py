"""The auditor's commands show a progress bar on a terminal and stay plain otherwise."""

from __future__ import annotations

import io

from runs.audit import progress_printer


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal() -> None:
    out = Terminal()
    show = progress_printer("verifying", 1000, out)
    assert show is not None
    show(500)
    show(1000)
    frames = out.getvalue().split("\r")[1:]
    assert frames[0] == f"verifying [{'#' * 15:<30}]  50% 500/1,000 events"
    assert frames[1] == f"verifying [{'#' * 30}] 100% 1,000/1,000 events"


def test_no_progress_output_when_redirected_or_empty() -> None:
    assert progress_printer("verifying", 1000, io.StringIO()) is None
    assert progress_printer("verifying", 0, Terminal()) is None
