"""The standard convolution's step of the fields path from columns: a chunk's input copied out as
columns (G, Cg * K, b * positions) by the native copy (``variants/fields_columns.cpp``), then one
matrix product per group with the weight as it lies, (Og, Cg * K) times those columns (through
oneDNN's inner product where ``variants.matrix_products.inner_product_pays``).

The fields' own layout (G, M, K), taps in (kernel, channel) order, needs a channels-last slab of
the input and a reordered copy of the weight (as large as the weight) on every call before its
product; the columns read a channels-first input in place and take the weight's order, so neither
copy is made. Where the native copy is not loaded, or the input is not channels first, the fields
path multiplies its fields (``field_products.write_products``); why the columns where they run:
docs/benchmarks.md. The backward of the same calls takes the weight's gradient from the same
columns (:func:`column_gradients`).
"""

from __future__ import annotations

import ctypes
import math
from functools import cache, lru_cache
from typing import Any

import torch

from ..geometry import Geometry
from ..variants.fused import NATIVE_DTYPES
from ..variants.matrix_products import batched_product, inner_product_pays, row_product
from ..variants.native import int64_arrays, load_library, native_enabled, native_path
from .blocks import copy_with_bias
from .chunks import Chunk

_SOURCE = "fields_columns.cpp"
_POINTER, _SIZE = ctypes.c_void_p, ctypes.c_int64
#: the copy's limit on spatial dimensions (``kMaxDimensions``)
MAX_DIMENSIONS = 8
#: elements copied per thread below which waking another thread costs more than it saves
_WORK_PER_THREAD = 2**15


def columns_fit(input: torch.Tensor) -> bool:
    """Whether the native columns take a call's chunks: a contiguous channels-first CPU input of a
    dtype the loops take, at most MAX_DIMENSIONS spatial dimensions, the copy built, and no trace.

    >>> columns_fit(torch.randn(1, 4, 6, 6)) in (True, False)
    True
    >>> columns_fit(torch.randn(1, 4, 6, 6).to(memory_format=torch.channels_last))
    False
    """
    return (
        input.device.type == "cpu"
        and input.dtype in NATIVE_DTYPES
        and input.dim() - 2 <= MAX_DIMENSIONS
        and input.is_contiguous()
        and not torch.compiler.is_compiling()
        and native_enabled()
        and _function(input.element_size()) is not None
    )


def columns_path() -> str:
    """``"native: <library>"`` or ``"eager: <why, and the fix>"``, as ``anyconv check`` reports it."""
    return native_path(_SOURCE)


def write_column_products(
    block: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: Geometry,
    chunk: Chunk,
    groups: int,
    buffer: torch.Tensor,
) -> None:
    """``block`` (b, G, Og, *region) = the weight times ``chunk``'s columns of ``input``, plus ``bias``.

    ``input`` (B, C, *spatial) passes :func:`columns_fit`; ``geometry`` holds the zero padding
    still to apply; ``buffer`` (flat, at least the chunk's fields' size) receives the columns.

    >>> import torch.nn.functional as F
    >>> from anyconv.engine.chunks import plan_chunks
    >>> from anyconv.geometry import make_geometry
    >>> x, w = torch.randn(2, 4, 6, 6), torch.randn(8, 4, 3, 3)
    >>> geometry = make_geometry((6, 6), 3, padding=1)
    >>> if columns_fit(x):
    ...     out = torch.empty(2, 8, 6, 6)
    ...     for chunk in plan_chunks(geometry, 2, 4 * 44, 2**18):
    ...         block = out.unflatten(1, (1, -1))[(slice(None),) * 3 + chunk.region][chunk.samples]
    ...         write_column_products(block, x, w, None, geometry, chunk, 1, torch.empty(2 * 36 * 36))
    ...     assert torch.allclose(out, F.conv2d(x, w, padding=1), atol=1e-5)
    """
    samples = chunk.samples.stop - chunk.samples.start
    region = tuple(piece.stop - piece.start for piece in chunk.region)
    filters = weight.reshape(groups, weight.shape[0] // groups, -1)
    shape = (groups, filters.shape[2], samples * math.prod(region))
    columns = buffer[: math.prod(shape)].view(shape)
    copy_columns(input, geometry, chunk.samples, chunk.region, columns)
    biases = None if bias is None else bias.view(groups, -1, *(1,) * geometry.ndim)
    if not inner_product_pays(filters[0], columns[0].T):
        if samples == 1 and block.is_contiguous():
            # one sample: the products' (G, Og, positions) is the block's own layout
            torch.bmm(filters, columns, out=block.view(groups, filters.shape[1], -1))
            if biases is not None:
                block.add_(biases)
            return
        products = torch.bmm(filters, columns).unflatten(2, (samples, *region))
        # (G, Og, b, *region) -> (b, G, Og, *region), the bias added in the same copy
        copy_with_bias(block, products.movedim(2, 0), biases)
        return
    for group in range(groups):
        # oneDNN's inner product takes the columns as its weights, read through the transposed
        # view, where the BLAS behind torch.bmm ran slower (docs/benchmarks.md)
        products = row_product(filters[group], columns[group].T, None).unflatten(1, (samples, *region))
        copy_with_bias(
            block[:, group],
            products.movedim(1, 0),
            None if biases is None else biases[group],
        )


def column_gradients(
    input: torch.Tensor,
    filters: torch.Tensor,
    grad: torch.Tensor,
    geometry: Geometry,
    chunk: Chunk,
    buffer: torch.Tensor,
    needs_input: bool,
    needs_weight: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One chunk's gradients of the standard product, each None where not needed: its fields'
    (G, M, Kg), ``grad`` (G, M, Og) times ``filters`` (G, Og, Kg), for the fold; and the weight's
    (G, Og, Cg * K) in the weight's own order, ``grad`` transposed times the chunk's columns of
    ``input``, copied natively into ``buffer`` (at least the chunk's fields' size).

    Where the fields' backward copies every field's taps one by one through a strided view and
    reorders the weight gradient after, the columns are the forward's own copy (each tap's row of
    positions in one run) and need no reordering.

    >>> import torch.nn.functional as F
    >>> from anyconv.engine.chunks import plan_chunks
    >>> from anyconv.engine.fields import filters_of
    >>> from anyconv.geometry import make_geometry
    >>> x, w = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(8, 4, 3, 3, dtype=torch.float64)
    >>> geometry = make_geometry((6, 6), 3, padding=1)
    >>> (chunk,) = plan_chunks(geometry, 2, 8 * 44, 2**20)
    >>> grad = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    >>> rows = grad.permute(1, 0, 2, 3).reshape(1, 8, -1).mT
    >>> buffer = torch.empty(4 * 9 * 72, dtype=torch.float64)
    >>> if columns_fit(x):
    ...     _, weight_grad = column_gradients(x, filters_of(w, 1), rows, geometry, chunk, buffer, False, True)
    ...     expected = torch.nn.grad.conv2d_weight(x, w.shape, grad, padding=1)
    ...     assert torch.allclose(weight_grad.view_as(w), expected)
    """
    grad_fields = batched_product(grad, filters) if needs_input else None
    grad_weight = None
    if needs_weight:
        shape = (filters.shape[0], filters.shape[2], grad.shape[1])
        columns = buffer[: math.prod(shape)].view(shape)
        copy_columns(input, geometry, chunk.samples, chunk.region, columns)
        grad_weight = batched_product(grad.mT, columns.mT)
    return grad_fields, grad_weight


def copy_columns(
    input: torch.Tensor, geometry: Geometry, samples: slice, region: tuple[slice, ...], columns: torch.Tensor
) -> None:
    """Write the columns (C * K, b * positions) of ``samples`` of ``input`` into ``columns``, for the
    output positions ``region`` (a slice per dimension) of ``geometry`` (whose zero padding is
    still to apply): rows in (channel, tap) order, F.unfold's, the samples side by side along the
    positions.

    ``input`` passes :func:`columns_fit`; ``columns`` is contiguous, of that many elements.

    >>> import torch.nn.functional as F
    >>> from anyconv.geometry import make_geometry
    >>> x = torch.randn(2, 3, 5, 5)
    >>> geometry = make_geometry((5, 5), 3, stride=2, padding=1)
    >>> if columns_fit(x):
    ...     columns = torch.empty(27, 2 * 6)
    ...     copy_columns(x, geometry, slice(0, 2), (slice(1, 3), slice(0, 3)), columns)
    ...     unfolded = F.unfold(x, 3, padding=1, stride=2).unflatten(2, (3, 3))[..., 1:3, :]
    ...     assert torch.equal(columns, unfolded.transpose(0, 1).reshape(27, -1))
    """
    counts = tuple(part.stop - part.start for part in region)
    _function(input.element_size())(
        input[samples].data_ptr(),
        columns.data_ptr(),
        samples.stop - samples.start,
        input.shape[1],
        geometry.ndim,
        *_sizes(geometry),
        *_region(tuple(part.start for part in region), counts),
        max(1, min(torch.get_num_threads(), columns.numel() // _WORK_PER_THREAD)),
    )


@cache
def _function(element_size: int) -> Any:
    """The native copy for elements of ``element_size`` bytes, or None where it is not built."""
    library = load_library(_SOURCE)
    if library is None or not hasattr(library, f"fields_columns_{element_size}"):
        return None
    function = getattr(library, f"fields_columns_{element_size}")
    function.argtypes = (_POINTER, _POINTER, *(_SIZE,) * 3, *(_POINTER,) * 7, ctypes.c_int)
    function.restype = None
    return function


@lru_cache(maxsize=256)
def _sizes(geometry: Geometry) -> tuple[Any, ...]:
    """The input and kernel sizes, stride, padding before and dilation as C arrays (kept alive by
    the cache)."""
    before = tuple(amount for amount, _ in geometry.padding)
    return int64_arrays(geometry.input_size, geometry.kernel_size, geometry.stride, before, geometry.dilation)


@lru_cache(maxsize=1024)
def _region(start: tuple[int, ...], count: tuple[int, ...]) -> tuple[Any, ...]:
    """A chunk's first output position and its count per dimension as C arrays (cached: kept alive)."""
    return int64_arrays(start, count)
