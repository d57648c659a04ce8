"""Timings that do not depend on what the process freed before: glibc's allocation thresholds fixed.

glibc serves a large block by a fresh ``mmap`` (page faults on every first touch, returned to the
system when freed) until a block of that size is freed, after which it raises its threshold and
serves such blocks from its heap. A process's timings then depend on its history: torch's own
depthwise 3x3 layer of bench_layers took 0.3 ms or 4 ms in processes that differed only in which
blocks anyconv had freed before. Fixing the thresholds (``mallopt``) serves every block from the
heap in every process, torch's and anyconv's alike. The peak-memory runs of ``bench_layers.py
--memory`` fix the mmap threshold low instead (``MALLOC_MMAP_THRESHOLD_``), so that a freed block
leaves the resident memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: mallopt's parameters (malloc.h) and the value given to both: larger than any one block here
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_THRESHOLD = 2**30


def steady_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(parameter, _THRESHOLD) == 1 for parameter in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))
