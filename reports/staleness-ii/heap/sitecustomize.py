"""Study II's lanes only (run.sh puts this directory first on PYTHONPATH, so every Python process of a lane imports
it at start-up): a daemon thread returns the process's freed heap to the kernel every TRIM_EVERY_S seconds with
glibc's `malloc_trim(0)`, what `vespo_cli.malloc.release_heap` does after each eval and checkpoint in trainers newer
than the study's pinned commit. Freed memory only: no value a run computes changes (the README's "Memory" paragraph
has the RSS it saves). Where there is no glibc it does nothing."""

import ctypes
import sys
import threading
import time

TRIM_EVERY_S = 30


def _trim_forever(trim) -> None:
    while True:
        time.sleep(TRIM_EVERY_S)
        trim(0)


def _start() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim  # glibc's soname: no ldconfig call at every start-up
    except (OSError, AttributeError):
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    threading.Thread(target=_trim_forever, args=(trim,), daemon=True, name="malloc-trim").start()


_start()
