"""One writer per directory: an OS lock (`fcntl.flock`) on `DIR/.vespo.lock`.

`vespo train` holds its run directory, `vespo rollout` its run directory and shard directory,
`vespo compare` its report directory, for as long as they write there. A second writer is refused
with one line naming the directory and the holder's PID (written into the lock file). The kernel
drops the lock when the holder exits, however it exits: a run killed with SIGKILL resumes at once.

Async rollout workers (`vespo rollout --follow RUN`) take no lock: they write new shard names into
`RUN/rollouts/` beside the trainer by design, and the trainer locks `RUN`, not `RUN/rollouts`.
The lock file stays after release (unlinking it would let two processes lock different inodes).
The descriptor is close-on-exec, so processes the holder starts do not keep the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError
from .rundir import LOCK as LOCK_NAME

_HELD: set[str] = set()  # lock files this process holds (flock is per open file: a second open would block)


def holder(directory: str | os.PathLike) -> str:
    """What the lock file of `directory` says about its holder ("pid N (command)"), or ""."""
    with contextlib.suppress(OSError):
        return (Path(directory) / LOCK_NAME).read_text(errors="replace").strip()
    return ""


@contextlib.contextmanager
def hold(directory: str | os.PathLike, command: str) -> Iterator[Path]:
    """Create `directory` if needed and lock it for this process while the block runs.

    Raises UserError when another process holds it; re-entrant within one process."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / LOCK_NAME
    key = os.path.realpath(path)
    if key in _HELD:
        yield path
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:  # read-only, permissions: say which directory cannot be written (or which lock)
        raise OSError(e.errno, e.strerror, str(path if e.errno == errno.EISDIR else d)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
            raise UserError(
                f"{d}: in use by another vespo process ({who}); wait for it to finish or stop it, then retry"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({command})\n".encode(), 0)
        _HELD.add(key)
        try:
            yield path
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)  # releases the flock
