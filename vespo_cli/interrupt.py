"""SIGTERM and SIGINT (what SLURM and Ctrl-C send) end a command with one line and the conventional
exit status 128 + signal number.

`interruptible(line)`: while the block runs, the first SIGTERM or SIGINT raises `Interrupted` (a
KeyboardInterrupt) in the main thread, so the block unwinds as for Ctrl-C: locks are released, engines
and workers closed, and every write in progress is abandoned whole (fsio.py writes under temporary
names and renames; `no_signals` keeps a directory's two renames together). Later signals are ignored
until the block has unwound. On the way out the exception's message becomes `line()` (e.g.
"interrupted at step K; `vespo train --resume RUN` continues"); the CLI prints it and exits 128 + signum.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """A SIGTERM or SIGINT; `signum` gives the exit status 128 + signum."""

    def __init__(self, signum: int, message: str = "interrupted") -> None:
        super().__init__(message)
        self.signum = signum


def exit_status(e: KeyboardInterrupt) -> int:
    """128 + the signal number (a plain KeyboardInterrupt is SIGINT: 130)."""
    return 128 + int(getattr(e, "signum", signal.SIGINT))


_FIRED: list[int] = []  # the signal being handled (the first one unwinds; later ones are ignored)
_DEFERRED: list[int] = [0]  # depth of `no_signals` blocks; a signal inside one waits for its end
_PENDING: list[int] = []  # that signal


def _handler(signum, _frame) -> None:
    if _FIRED:
        return  # unwinding already: a second signal would tear the cleanup
    _FIRED.append(signum)
    if _DEFERRED[0]:
        _PENDING.append(signum)
    else:
        raise Interrupted(signum)


@contextlib.contextmanager
def interruptible(line: Callable[[], str]) -> Iterator[None]:
    """SIGTERM/SIGINT raise `Interrupted` once while the block runs; it leaves with message `line()`."""
    if threading.current_thread() is not threading.main_thread():  # handlers are the main thread's
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _FIRED.clear()
    try:
        yield
    except KeyboardInterrupt as e:
        raise Interrupted(_FIRED[0] if _FIRED else signal.SIGINT, line()) from e
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _FIRED.clear()


@contextlib.contextmanager
def no_signals() -> Iterator[None]:
    """Hold an interruption back until the block ends: for a few system calls that must happen
    together, such as replacing a directory by two renames."""
    _DEFERRED[0] += 1
    try:
        yield
    finally:
        _DEFERRED[0] -= 1
    if not _DEFERRED[0] and _PENDING:
        raise Interrupted(_PENDING.pop())
