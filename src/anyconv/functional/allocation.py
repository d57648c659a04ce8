"""Fresh output buffers for the copies of im2col (on Linux CPUs large ones ask for huge pages), and
the check that a tensor about to be made fits in its device's memory at all.

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
import os
import sys
from functools import lru_cache
from typing import Any

import torch

from ..geometry import Geometry
from ..geometry.limits import check_size

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


def check_fits(what: str, shape: tuple[int, ...], like: torch.Tensor, culprit: tuple[str, Any]) -> None:
    """Refuse, naming ``culprit`` (argument, value), a tensor of ``shape`` like ``like`` that cannot be made.

    Cannot be made: more bytes than torch can count (int64), or than the whole memory of the
    device (:func:`device_memory`). Checked before allocating, so that an impossible size is an
    ArgumentError in microseconds, not an allocation that fails late or a process the system kills.

    >>> import torch
    >>> check_fits("the output", (2, 3), torch.zeros(1), ("padding", 1))
    >>> check_fits("the output", (2**30, 2**30), torch.zeros(1), ("padding", 2**29))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    anyconv.errors.ArgumentError: padding=536870912 is invalid: ... would take 4.0 EiB, more than the ...
    """
    check_size(what, shape, like.element_size(), culprit)
    memory = device_memory(like.device)
    if memory is not None:
        where = "this machine" if like.device.type == "cpu" else str(like.device)
        check_size(what, shape, like.element_size(), culprit, memory, f"of memory of {where}")


def device_memory(device: torch.device) -> int | None:
    """The total memory of ``device`` in bytes (of the machine for the CPU), or None where unknown.

    No tensor larger than this can be allocated there, whatever is free at the time.
    """
    if device.type == "cpu":
        return CPU_MEMORY
    if device.type == "cuda" and not torch.compiler.is_compiling() and torch.cuda.is_available():
        return _cuda_memory(device.index or 0)
    # meta tensors allocate nothing; other devices do not say
    return None


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


#: read once at import: torch.compile cannot trace the system call
CPU_MEMORY = _physical_memory()


@lru_cache(maxsize=16)
def _cuda_memory(index: int) -> int:
    return torch.cuda.get_device_properties(index).total_memory


def check_padded_fits(input: torch.Tensor, geometry: Geometry, padding: Any) -> None:
    """Refuse a padding whose padded copy of ``input`` (B, C, *spatial) cannot be made."""
    if geometry.is_padded:
        shape = (*input.shape[: -geometry.ndim], *geometry.padded_size)
        check_fits("the padded input", shape, input, ("padding", padding))
