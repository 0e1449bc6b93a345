"""Keep freed memory in the process instead of handing it back to the system after every batch.

glibc's malloc serves each block above its mmap threshold (128 KiB, raised as it goes) with a
fresh mmap and unmaps it when freed, and trims the heap's free top back to the system. A
network on the CPU allocates and frees the same large activations every batch, so the kernel
zero-fills the same pages again and again: on LRErr's scoring this was as much system time as
compute (docs/performance.md, "Memory allocator"). Raising both thresholds lets malloc reuse
those blocks; the peak memory is the same, only released later.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEEP_BYTES = 2**30  # blocks up to 1 GiB come from the heap, and up to 1 GiB of free top is kept


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; False where the C library is not glibc (nothing done)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # no libc found, or one without mallopt (musl, macOS)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
