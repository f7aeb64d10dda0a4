"""The progress display without a terminal: one plain line per update, on stdout (issue 30)."""

from __future__ import annotations

import io
import re

from rich.console import Console

from vespo_cli.progress import PlainLines, progress_bar


def test_no_terminal_gets_plain_lines():
    assert isinstance(progress_bar(Console(file=io.StringIO())), PlainLines)


def test_one_plain_line_per_update():
    out = io.StringIO()
    with PlainLines(Console(file=out, width=40)) as progress:  # narrower than a line: not wrapped
        task = progress.add_task("train vespo N=4", total=32, completed=2, info="")
        progress.update(task, completed=3, info="reward 0.250  loss +0.0100  |g| 1.500")
        progress.update(task, advance=1, info="reward [0.5]")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"train vespo N=4 3/32  reward 0\.250  loss \+0\.0100  \|g\| 1\.500  \d+\.\ds", lines[0])
    assert re.fullmatch(r"train vespo N=4 4/32  reward \[0\.5\]  \d+\.\ds", lines[1])  # no markup


def test_disabled_plain_lines_print_nothing():
    out = io.StringIO()
    with PlainLines(Console(file=out), disable=True) as progress:
        progress.update(progress.add_task("rollout", total=4, info=""), advance=2, info="x")
    assert out.getvalue() == ""
