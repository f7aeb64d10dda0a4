"""The progress display of the long-running commands (`vespo train`, `vespo rollout`, `vespo probe`): a rich
bar on a terminal, one plain line per update on stdout elsewhere (SLURM logs, `| tee`, `| cat`), and the
status lines they print before it (`announce`). Plain lines go to stdout, the log a user keeps; stderr
keeps its contract of errors and warnings, one line each."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(console: Console, *, disable: bool = False) -> Progress | PlainLines:
    """Description, bar, done/total, the task's `info` field (give `info=""` to add_task) and the time
    elapsed, drawn on `console`; `disable`: draw nothing (e.g. on every rank but the main one). When
    `console` or stdout is not a terminal (a batch job's log, `| tee`), `PlainLines` instead: a bar there
    prints nothing until the end."""
    if not (console.is_terminal and sys.stdout.isatty()):
        return PlainLines(Console(), disable=disable)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
    )


def announce(text: str) -> None:
    """One plain status line on stdout (e.g. "loading model … "), so a job's log shows what it waits for."""
    Console().print(text, markup=False, highlight=False, soft_wrap=True)


class PlainLines:
    """The bar's stand-in without a terminal: every `update` prints one plain line, `<description>
    <done>/<total>  <info>  <seconds since the task's previous line>s` (one per optimizer step of `train`,
    one per shard of `rollout`), as verl's console logger and TRL's `logging_steps` do. Takes the part of
    rich's Progress interface the commands use: add_task, update, and `with`."""

    def __init__(self, console: Console, *, disable: bool = False):
        self.console, self.disable = console, disable
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> PlainLines:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        task = len(self.tasks)
        self.tasks[task] = {"description": description, "total": total, "completed": completed, "t": time.time()}
        return task

    def update(self, task: int, *, completed: float | None = None, advance: float | None = None, info: str = ""):
        t = self.tasks[task]
        t["completed"] = completed if completed is not None else t["completed"] + (advance or 0)
        now = time.time()
        seconds, t["t"] = now - t["t"], now
        if self.disable:
            return
        total = f"/{t['total']:g}" if t["total"] is not None else ""
        self.console.print(
            f"{t['description']} {t['completed']:g}{total}  {info}  {seconds:.1f}s",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
