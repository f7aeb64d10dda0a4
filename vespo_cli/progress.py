"""The rich progress bar of the long-running commands (`vespo train`, `vespo rollout`, `vespo probe`)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(console: Console, *, disable: bool = False) -> Progress:
    """Description, bar, done/total, the task's `info` field (give `info=""` to add_task) and the time
    elapsed, drawn on `console`; `disable`: draw nothing (e.g. on every rank but the main one)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
    )
