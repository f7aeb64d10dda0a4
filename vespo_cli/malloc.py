"""Keep freed tensor memory in the process heap instead of handing it back to the kernel (glibc);
applied by `runtime.configure()`, not on import.

glibc serves allocations above M_MMAP_THRESHOLD (128 KiB, adapted upwards at run time) with a
fresh mmap and unmaps them on free, so every new multi-MiB CPU tensor page-faults on first write:
on the objectives benchmark that is most of the time of a loss, and a few percent of a trainer step
(reports/bench/micro.json, allocator_train.json).
Raising the mmap and trim thresholds lets freed blocks be reused without faults, the effect
jemalloc/tcmalloc give PyTorch on CPU, without an LD_PRELOAD. The price: memory is not returned
to the system until the process ends, and over a long run with varying shapes the retained heap grows
(docs/performance.md has the measurements). VESPO_MALLOC_TUNING=0 turns it off.

Either way, freed memory inside the heap (between live blocks) stays resident until `malloc_trim`:
`release_heap()` gives it back, and the trainer calls it after each eval and checkpoint, the two
events that allocate and free gigabytes at once (Study II, 2026-12-06: a SmolLM2 trainer grew from
6.7 GB at step 16 to 9.9 GB at step 48, and one malloc_trim took it back to 4.9 GB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 2**20  # larger blocks are still mmapped: their faults are small next to their use
TRIM_THRESHOLD = 1 * 2**30  # free memory kept at the top of the heap before it is given back


@functools.cache
def _libc():  # find_library runs ldconfig: once per process
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def release_heap() -> bool:
    """Return the heap's free pages to the kernel (glibc `malloc_trim(0)`); True if any were returned,
    False where there is no glibc."""
    trim = getattr(_libc(), "malloc_trim", None) if sys.platform.startswith("linux") else None
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def tune_malloc() -> bool:
    """Apply the thresholds once per process on glibc Linux; True if they took effect."""
    if not sys.platform.startswith("linux") or os.environ.get("VESPO_MALLOC_TUNING", "1") == "0":
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
