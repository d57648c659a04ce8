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


def fold_into(
    fields: torch.Tensor,
    geometry: Geometry,
    output: torch.Tensor,
    start: tuple[int, ...],
    bias: torch.Tensor | None,
) -> bool:
    """Fold the fields (G, b * M, Kg), taps in the order (*kernel, channel), straight into a
    channels-first ``output`` (b, C, *size): the region of the slab of ``geometry`` that starts at
    ``start``, plus ``bias`` (C,) per channel, places past the slab's end getting the bias alone.
    Native only: returns False, with nothing written, where the native fold does not run (or the
    output is not contiguous), so that the caller folds into a slab and copies its region.

    >>> from anyconv.geometry import make_geometry
    >>> output = torch.empty(1, 1, 3)
    >>> folded = fold_into(torch.ones(1, 2, 3), make_geometry((4,), 3), output, (1,), torch.ones(1))
    >>> not folded or output.flatten().tolist() == [3.0, 3.0, 2.0]  # slab [1, 2, 2, 1] from 1, + 1
    True
    """
    function = _native(fields, "fold_into")
    if function is None or not output.is_contiguous() or (bias is not None and bias.dtype != output.dtype):
        return False
    source = fields.contiguous()
    shift = None if bias is None else bias.contiguous()
    function(
        source.data_ptr(),
        output.data_ptr(),
        None if shift is None else shift.data_ptr(),
        output.shape[0],
        fields.shape[0],
        fields.shape[2] // geometry.kernel_volume,
        geometry.ndim,
        *_sizes(geometry),
        *_region(start, tuple(output.shape[2:])),
        max(1, min(torch.get_num_threads(), source.numel() // _WORK_PER_THREAD)),
    )
    return True


def transposed_matrices(matrices: torch.Tensor) -> torch.Tensor:
    """``matrices`` (n, a, b) transposed into a contiguous (n, b, a): natively for CPU tensors of
    2, 4 or 8 bytes an element where the fold's library loads, else by torch's copy.

    >>> transposed_matrices(torch.arange(6.0).reshape(1, 2, 3)).tolist()
    [[[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]]
    """
    source = matrices.contiguous()
    function = None
    if source.device.type == "cpu" and not source.requires_grad and not torch.compiler.is_compiling():
        function = _transpose_function(source.element_size()) if native_enabled() else None
    if function is None or source.is_complex():
        return source.mT.contiguous()
    count, rows, columns = source.shape
    target = source.new_empty((count, columns, rows))
    function(
        source.data_ptr(),
        target.data_ptr(),
        count,
        rows,
        columns,
        max(1, min(torch.get_num_threads(), source.numel() // _WORK_PER_THREAD)),
    )
    return target


@cache
def _transpose_function(element_size: int) -> Any:
    library = load_library(_SOURCE)
    if library is None or not hasattr(library, f"transpose_matrices_{element_size}"):
        return None
    function = getattr(library, f"transpose_matrices_{element_size}")
    function.argtypes = (_POINTER, _POINTER, *(_SIZE,) * 3, ctypes.c_int)
    function.restype = None
    return function


def fold_path() -> str:
    """``"native: <library>"`` or ``"eager: <why, and the fix>"``, as ``anyconv check`` reports it."""
    return native_path(_SOURCE)


def _native(grad_fields: torch.Tensor, name: str = "fold_fields") -> Any:
    """The native ``name`` (``fold_fields`` or ``fold_into``) for ``grad_fields``' dtype, or None
    where the eager fold runs."""
    if (
        grad_fields.device.type != "cpu"
        or grad_fields.dtype not in NATIVE_DTYPES
        or grad_fields.requires_grad
        or torch.compiler.is_compiling()
        or not native_enabled()
    ):
        return None
    return _function(name, NATIVE_DTYPES[grad_fields.dtype])


#: the native functions' arguments after their fields and result: (the bias,) the samples,
#: groups, channels per group and dimensions, five size arrays (and the region's start and size)
_ARGUMENTS = {
    "fold_fields": (*(_SIZE,) * 4, *(_POINTER,) * 5),
    "fold_into": (_POINTER, *(_SIZE,) * 4, *(_POINTER,) * 7),
}


@cache
def _function(name: str, suffix: str) -> Any:
    library = load_library(_SOURCE)
    # a compiler without _Float16 builds no float16 fold
    if library is None or not hasattr(library, f"{name}_{suffix}"):
        return None
    function = getattr(library, f"{name}_{suffix}")
    function.argtypes = (_POINTER, _POINTER, *_ARGUMENTS[name], ctypes.c_int)
    function.restype = None
    return function


@lru_cache(maxsize=256)
def _sizes(geometry: Geometry) -> tuple[Any, ...]:
    """The slab, output and kernel sizes, stride and dilation as C arrays (kept alive by the cache)."""
    return int64_arrays(
        geometry.padded_size, geometry.output_size, geometry.kernel_size, geometry.stride, geometry.dilation
    )


@lru_cache(maxsize=256)
def _region(start: tuple[int, ...], size: tuple[int, ...]) -> tuple[Any, ...]:
    """A region's start and size as C arrays (kept alive by the cache)."""
    return int64_arrays(start, size)
