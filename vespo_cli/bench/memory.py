"""Peak resident memory of a process tree, sampled in a thread (psutil where installed, /proc otherwise)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .machine import GiB, _psutil


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    ps = _psutil()
    if ps is not None:
        try:
            return ps.Process(pid).memory_info().rss
        except (ps.Error, OSError):
            pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
        return out
    except OSError:
        pass
    ps = _psutil()
    if ps is not None:
        try:
            return [c.pid for c in ps.Process(pid).children()]
        except (ps.Error, OSError):
            pass
    return out


def tree_rss(pid: int | None = None) -> int:
    """RSS of a process plus all its descendants (bytes; shared pages counted once per process)."""
    todo, total, seen = [pid or os.getpid()], 0, set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss(p)
        todo += _children(p)
    return total


class PeakRSS:
    """Samples this process tree's RSS every `interval` seconds in a daemon thread; `.peak` in bytes.
    The peak of the main process alone is also taken from getrusage (exact, not sampled)."""

    def __init__(self, interval: float = 0.05):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss())
            self._stop.wait(interval)

    def report(self) -> dict:
        import resource

        self.peak = max(self.peak, tree_rss())
        return {
            "peak_tree_rss_gib": self.peak / GiB,
            "peak_main_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB,
        }
