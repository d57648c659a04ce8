"""Fresh output buffers for the copies of im2col: on Linux CPUs, large ones ask for huge pages.

Writing a freshly allocated buffer costs one page fault per 4 KiB page, which for im2col's large
outputs takes several times longer than the copy itself. Advising the kernel (``madvise
MADV_HUGEPAGE``) that the buffer may use 2 MiB pages removes most of those faults. This is the
advice torch gives to every allocation under its ``THP_MEM_ALLOC_ENABLE=1`` switch, given here only
to the buffers anyconv allocates and fills at once. It is advice: where it is not available
(another OS, THP off, another device) nothing changes but the speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache

import torch

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14
# Below a few huge pages the advice saves little and the call is not worth making.
SMALLEST_ADVISED = 4 * HUGE_PAGE

use_huge_pages = True
"""Set to False to allocate like ``torch.empty`` (to measure what the advice brings)."""


@lru_cache(maxsize=1)
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


def empty_for_copy(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor with the dtype and device of ``like``, about to be written whole.

    >>> import torch
    >>> empty_for_copy((2, 3), torch.zeros(1, dtype=torch.int32)).dtype
    torch.int32
    """
    # new_empty, not torch.empty: under torch.vmap it allocates a batched buffer
    buffer = like.new_empty(shape)
    nbytes = buffer.numel() * buffer.element_size()
    if use_huge_pages and buffer.device.type == "cpu" and nbytes >= SMALLEST_ADVISED:
        _advise_huge_pages(buffer, nbytes)
    return buffer


def _advise_huge_pages(buffer: torch.Tensor, nbytes: int) -> None:
    madvise = _madvise()
    if madvise is None:
        return
    try:
        address = buffer.data_ptr()
    except RuntimeError:  # a tensor without plain storage (vmap, fake or meta tensors)
        return
    # only whole huge pages inside the buffer: the advice must not reach memory it does not own
    start = -(-address // HUGE_PAGE) * HUGE_PAGE
    end = (address + nbytes) // HUGE_PAGE * HUGE_PAGE
    if end > start:
        madvise(start, end - start, MADV_HUGEPAGE)
