"""glibc's malloc in a training process: freed tensor memory kept for the next step instead
of handed back to the kernel and faulted in again.

By default glibc serves an allocation above its mmap threshold (128 kB at first, raised
as such blocks are freed, up to 32 MB on 64-bit) with fresh pages, and gives the heap's
free top back to the kernel once it exceeds twice the threshold. A training step frees
what it allocated, so the next step touches new pages again: a fault per 4 kB page, about
1.4 us each on this project's 2-core VMs. On the ``make train`` network the monitoring's
logging step (a few 0.6 MB temporaries) made the heap shrink and the next steps fault:
0.7 ms of a 5 ms step. PyTorch's CPU performance guide answers the same with jemalloc or
tcmalloc through ``LD_PRELOAD``; setting glibc's own two thresholds does it in-process.

What it costs: blocks from 128 kB to 32 MB come from the heap, where a block still in use
can keep the free memory below it from going back to the kernel; each malloc arena (one
per thread that allocates, at most 8 per core) keeps up to 64 MB of free top; glibc's own
adjustment of the thresholds is off. Config ``keep_freed_memory=false`` leaves glibc as
it is, as does setting any of :data:`USER_SETTINGS`.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

#: mallopt's parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (glibc's ceiling for its dynamic threshold).
MMAP_THRESHOLD = 32 << 20
#: The heap's free top is given back to the kernel only beyond this.
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
#: Environment variables through which a person tunes glibc's malloc: theirs win.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to 32 MB and 64 MB, where its own rule would
    end up after freeing a 32 MB block, from the start. Blocks of 32 MB or more are mapped
    and unmapped as before. Returns whether it was set: not on other C libraries (musl,
    macOS, Windows), on 32-bit builds, or where :data:`USER_SETTINGS` are set."""
    if platform.libc_ver()[0] != "glibc" or sys.maxsize < 2**32:
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success.
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
