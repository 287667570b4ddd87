"""glibc's malloc in a training process: freed tensor memory kept for the next step instead
of handed back to the kernel and faulted in again.

By default glibc serves an allocation above its mmap threshold (128 kB, raised up to 32 MB
as such blocks are freed) with fresh pages, and gives the heap's free top back to the
kernel once it exceeds twice the threshold. A training step frees what it allocated, so
the next step touches new pages again: each page a fault, about 1.4 us each on this
project's 2-core VMs. On the ``make train`` network the monitoring's logging step
(a few 0.6 MB temporaries) made the heap shrink and the next steps fault: 0.7 ms a step,
14% of the run. PyTorch's CPU tuning guide answers the same with jemalloc or tcmalloc
through ``LD_PRELOAD``; setting glibc's own two thresholds does it in-process.
"""

from __future__ import annotations

import ctypes
import platform

#: mallopt's parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (glibc's own ceiling for its dynamic threshold).
MMAP_THRESHOLD = 32 << 20
#: The heap's free top is given back to the kernel only beyond this.
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to the ceiling its own dynamic rule would reach
    (32 MB / 64 MB), from the start. Memory still goes back to the kernel, only not freed
    tops under 64 MB, and blocks of 32 MB or more are mapped and unmapped as before.
    Returns whether it was set (not on other C libraries)."""
    if platform.libc_ver()[0] != "glibc":
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
