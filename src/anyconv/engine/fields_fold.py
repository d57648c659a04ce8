"""The gradients of a chunk's fields folded back into its padded slab (col2im), native or eager.

The eager fold adds each kernel tap's gradients into the slab, one strided add per tap over the
whole chunk, and pays a dispatch per tap and chunk. The native fold (``variants/fields_fold.cpp``)
visits each slab position once and sums the taps that read it in the same order, so float32 and
float64 give the eager fold's numbers bit for bit; it takes the CPU dtypes the native loops take,
where their library loaded, outside a graph being recorded or traced.
"""

from __future__ import annotations

import ctypes
from functools import cache, lru_cache
from typing import Any

import torch

from ..functional.im2col import add_blocks
from ..geometry import Geometry
from ..variants.fused import NATIVE_DTYPES
from ..variants.native import int64_arrays, load_library, native_enabled, native_path

_SOURCE = "fields_fold.cpp"
_POINTER, _SIZE = ctypes.c_void_p, ctypes.c_int64
#: elements of the fields' gradient per thread below which waking another thread costs more than it
#: saves; a few-channel layer's fold spends most of its time per slab position, not per element,
#: so that a thread pays already from this few (docs/benchmarks.md)
_WORK_PER_THREAD = 2**14


def fold_fields(grad_fields: torch.Tensor, geometry: Geometry, samples: int) -> torch.Tensor:
    """The fields' gradients (G, b * M, Kg), taps in the order (*kernel, channel), summed into a
    channels-last slab (b, *padded_size, C) of ``geometry`` (the chunk's), zero where no field reads.

    >>> from anyconv.geometry import make_geometry
    >>> geometry = make_geometry((4,), 3)
    >>> fold_fields(torch.ones(1, 2, 3), geometry, 1).flatten().tolist()
    [1.0, 2.0, 2.0, 1.0]
    """
    groups, per_group = grad_fields.shape[0], grad_fields.shape[2] // geometry.kernel_volume
    shape = (samples, *geometry.padded_size, groups * per_group)
    function = _native(grad_fields)
    if function is not None:
        slab = grad_fields.new_empty(shape)
        source = grad_fields.contiguous()
        work = source.numel()
        function(
            source.data_ptr(),
            slab.data_ptr(),
            samples,
            groups,
            per_group,
            geometry.ndim,
            *_sizes(geometry),
            max(1, min(torch.get_num_threads(), work // _WORK_PER_THREAD)),
        )
        return slab
    slab = grad_fields.new_zeros(shape)
    image = slab.movedim(-1, 1).unflatten(1, (groups, -1))
    ndim = geometry.ndim
    blocks = grad_fields.reshape(groups, samples, *geometry.output_size, *geometry.kernel_size, per_group)
    # (G, b, *out, *kernel, Cg) -> (b, G, Cg, *kernel, *out), the layout add_blocks reads
    order = (1, 0, 2 + 2 * ndim, *range(2 + ndim, 2 + 2 * ndim), *range(2, 2 + ndim))
    add_blocks(image, blocks.permute(order), geometry)
    return slab


def fold_path() -> str:
    """``"native: <library>"`` or ``"eager: <why, and the fix>"``, as ``anyconv check`` reports it."""
    return native_path(_SOURCE)


def _native(grad_fields: torch.Tensor) -> Any:
    """The native fold for ``grad_fields``' dtype, or None where the eager fold runs."""
    if (
        grad_fields.device.type != "cpu"
        or grad_fields.dtype not in NATIVE_DTYPES
        or grad_fields.requires_grad
        or torch.compiler.is_compiling()
        or not native_enabled()
    ):
        return None
    return _function(NATIVE_DTYPES[grad_fields.dtype])


@cache
def _function(suffix: str) -> Any:
    library = load_library(_SOURCE)
    # a compiler without _Float16 builds no float16 fold
    if library is None or not hasattr(library, f"fold_fields_{suffix}"):
        return None
    function = getattr(library, f"fold_fields_{suffix}")
    function.argtypes = (_POINTER, _POINTER, *(_SIZE,) * 4, *(_POINTER,) * 5, ctypes.c_int)
    function.restype = None
    return function


@lru_cache(maxsize=256)
def _sizes(geometry: Geometry) -> tuple[Any, ...]:
    """The slab, output and kernel sizes, stride and dilation as C arrays (kept alive by the cache)."""
    return int64_arrays(
        geometry.padded_size, geometry.output_size, geometry.kernel_size, geometry.stride, geometry.dilation
    )
