"""im2col and col2im on an already padded input: the two adjoint kernels every layer stands on.

``im2col`` copies the receptive fields out of a strided view; ``col2im`` adds them back with one
strided add per kernel tap (K adds of B*C*L elements, integer slicing only, so it is exact for any
size and any dtype that adds), or, where the fields tile the input (:func:`tiles`), reorders them
in one copy. Each is the other's backward, through two autograd Functions.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from types import EllipsisType
from typing import Any

import torch

from ..geometry import Geometry
from ..geometry.arguments import is_traced
from .allocation import empty_for_copy
from .transforms import transformed


def field_view(padded: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """A zero-copy view (B, C, *out, *kernel) of the receptive fields of a padded input."""
    view = padded
    first_spatial = padded.dim() - geometry.ndim
    for axis, (span, step) in enumerate(zip(geometry.field_span, geometry.stride)):
        view = view.unfold(first_spatial + axis, span, step)
    if any(spacing > 1 for spacing in geometry.dilation):
        taps = tuple(slice(None, None, spacing) for spacing in geometry.dilation)
        index: tuple[EllipsisType | slice, ...] = (..., *taps)
        view = view[index]
    return view


def tap_slices(geometry: Geometry, tap: tuple[int, ...]) -> tuple[slice, ...]:
    """The slices of the padded input that kernel tap ``tap`` reads, over all output positions."""
    return tuple(
        slice(offset * spacing, offset * spacing + step * (count - 1) + 1, step)
        for offset, spacing, step, count in zip(tap, geometry.dilation, geometry.stride, geometry.output_size)
    )


def im2col(padded: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Copy the fields of a padded (B, C, *padded_size) input into columns (B, C*K, L)."""
    batch, channels = padded.shape[:2]
    ndim = geometry.ndim
    fields = field_view(padded, geometry)
    # (B, C, *out, *kernel) -> (B, C, *kernel, *out): torch's F.unfold order, channel-major rows.
    # One copy into a fresh buffer: never a view, which would alias the input when no copy is needed
    # (a 1x1 kernel). Measured faster than a copy per kernel tap or a pad-free interior copy.
    order = (0, 1, *range(2 + ndim, 2 + 2 * ndim), *range(2, 2 + ndim))
    columns = empty_for_copy((batch, channels, *geometry.kernel_size, *geometry.output_size), padded)
    columns.copy_(fields.permute(order))
    return columns.view(batch, channels * geometry.kernel_volume, geometry.num_positions)


def col2im(columns: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Sum columns (B, C*K, L) back into a padded (B, C, *padded_size) tensor: im2col's adjoint."""
    batch = columns.shape[0]
    channels = columns.shape[1] // geometry.kernel_volume
    blocks = columns.reshape(batch, channels, *geometry.kernel_size, *geometry.output_size)
    if tiles(geometry):
        # each image position is one tap of one field: the sum is a reordering, one copy where
        # zeros and an add per tap made K + 1 passes
        ndim = geometry.ndim
        order = (0, 1, *itertools.chain.from_iterable((2 + ndim + axis, 2 + axis) for axis in range(ndim)))
        interleaved = tuple(size for pair in zip(geometry.output_size, geometry.kernel_size) for size in pair)
        image = empty_for_copy((batch, channels, *interleaved), columns)
        image.copy_(blocks.permute(order))
        return image.view(batch, channels, *geometry.padded_size)
    image = columns.new_zeros((batch, channels, *geometry.padded_size))
    add_blocks(image, blocks, geometry)
    return image


def tiles(geometry: Geometry) -> bool:
    """Whether the fields tile the padded input: each position in exactly one field, at exactly
    one tap (a kernel as large as its stride, undilated, covering the input to its end).

    >>> from anyconv.geometry import make_geometry
    >>> tiles(make_geometry((8, 6), 2, stride=2)), tiles(make_geometry((7, 6), 2, stride=2))
    (True, False)
    >>> tiles(make_geometry((8, 6), 3, stride=2)), tiles(make_geometry((8,), 2, stride=2, dilation=2))
    (False, False)
    """
    if is_traced((*geometry.padded_size, *geometry.output_size)):
        return False  # a comparison of symbolic sizes would guard the trace on it
    sizes = zip(geometry.padded_size, geometry.output_size)
    return all(
        kernel == step and (kernel == 1 or spacing == 1) and padded == count * step
        for kernel, step, spacing, (padded, count) in zip(
            geometry.kernel_size, geometry.stride, geometry.dilation, sizes
        )
    )


def add_blocks(image: torch.Tensor, blocks: torch.Tensor, geometry: Geometry) -> None:
    """Add fields shaped (*lead, *kernel, *out), any strides, into an image (*lead, *padded) in place."""
    # a trace's geometry may hold symbolic sizes, which cannot be hashed: its indices made anew
    pairs = _tap_indices(geometry) if is_traced(geometry.output_size) else _cached_tap_indices(geometry)
    for target, source in pairs:
        image[target] += blocks[source]


Index = tuple[EllipsisType | int | slice, ...]


def _tap_indices(geometry: Geometry) -> list[tuple[Index, Index]]:
    """For each kernel tap, the index of the image it adds into and that of its blocks."""
    positions = (slice(None),) * geometry.ndim
    return [
        ((..., *tap_slices(geometry, tap)), (..., *tap, *positions))
        for tap in itertools.product(*(range(kernel) for kernel in geometry.kernel_size))
    ]


# made once per geometry: a call of col2im indexes every tap, the slices cost as much as the adds
# of a small image
_cached_tap_indices = lru_cache(maxsize=256)(_tap_indices)


class Im2Col(torch.autograd.Function):
    """im2col with col2im as its backward (and so twice differentiable)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(padded: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        return im2col(padded, geometry)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.geometry = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad_columns: torch.Tensor) -> tuple[torch.Tensor, None]:
        return image_of(grad_columns, ctx.geometry), None


class Col2Im(torch.autograd.Function):
    """col2im with im2col as its backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(columns: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        return col2im(columns, geometry)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.geometry = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad_image: torch.Tensor) -> tuple[torch.Tensor, None]:
        return columns_of(grad_image, ctx.geometry), None


# Forward mode needs a jvp rule, which torch.compile refuses to trace in an autograd Function:
# the rules live in subclasses taken only under a transform (torch.func's, or a dual level).
class _Im2ColWithTangent(Im2Col):
    @staticmethod
    def jvp(ctx: Any, padded_tangent: torch.Tensor, _: Any) -> torch.Tensor:
        # linear: the tangent's own columns
        return _Im2ColWithTangent.apply(padded_tangent, ctx.geometry)


class _Col2ImWithTangent(Col2Im):
    @staticmethod
    def jvp(ctx: Any, columns_tangent: torch.Tensor, _: Any) -> torch.Tensor:
        # linear: the tangent folded back
        return _Col2ImWithTangent.apply(columns_tangent, ctx.geometry)


def columns_of(padded: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """im2col of a padded input, differentiable in reverse mode, twice, and in forward mode.

    >>> from anyconv.geometry import make_geometry
    >>> columns_of(torch.arange(9.0).view(1, 1, 3, 3), make_geometry((3, 3), 2)).shape
    torch.Size([1, 4, 4])
    """
    return (_Im2ColWithTangent if transformed() else Im2Col).apply(padded, geometry)


def image_of(columns: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """col2im into the padded input's shape, differentiable as :func:`columns_of` is.

    >>> from anyconv.geometry import make_geometry
    >>> image_of(torch.ones(1, 4, 4), make_geometry((3, 3), 2))[0, 0]
    tensor([[1., 2., 1.],
            [2., 4., 2.],
            [1., 2., 1.]])
    """
    return (_Col2ImWithTangent if transformed() else Col2Im).apply(columns, geometry)
