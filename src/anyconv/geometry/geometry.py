"""The Geometry of a convolution: every size the tensor code needs, computed once from integers.

A Geometry is frozen, hashable and cached, so the functional layer builds it per call for free
and never re-derives a size by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..errors import ArgumentError, invalid
from .arguments import as_size, check_padding_mode, is_sequence, is_traced, spatial_tuple
from .padding import PaddingPairs, padding_pairs


@dataclass(frozen=True)
class Geometry:
    """Sizes of an N-d convolution over one spatial input size; build it with :func:`make_geometry`.

    >>> g = make_geometry((32, 32), kernel_size=3, padding=1, stride=2)
    >>> g.output_size, g.kernel_volume, g.num_positions
    ((16, 16), 9, 256)
    """

    input_size: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: PaddingPairs
    dilation: tuple[int, ...]
    padding_mode: str = "zeros"

    # The derived sizes, computed once here: functools.cached_property takes a lock on each
    # access (Python < 3.12), which torch.compile cannot trace (a graph break on every call).
    padded_size: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """The spatial size after padding, before the kernel slides."""
    field_span: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """How many input elements one receptive field spans per dimension: ``d * (k - 1) + 1``."""
    output_size: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """The spatial output size: ``(padded - span) // stride + 1`` per dimension."""
    kernel_volume: int = field(init=False, repr=False, compare=False)
    """K, the number of taps in one kernel: the product of kernel_size."""
    num_positions: int = field(init=False, repr=False, compare=False)
    """L, the number of receptive fields (output positions) per sample and channel."""
    torch_pad: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """The padding in ``torch.nn.functional.pad`` order: last dimension first, (before, after)."""

    def __post_init__(self) -> None:
        padded = tuple(size + before + after for size, (before, after) in zip(self.input_size, self.padding))
        span = tuple(step * (kernel - 1) + 1 for kernel, step in zip(self.kernel_size, self.dilation))
        output = tuple((size - reach) // step + 1 for size, reach, step in zip(padded, span, self.stride))
        derived = {
            "padded_size": padded,
            "field_span": span,
            "output_size": output,
            "kernel_volume": math.prod(self.kernel_size),
            "num_positions": math.prod(output),
            "torch_pad": tuple(amount for pair in reversed(self.padding) for amount in pair),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def ndim(self) -> int:
        """The number of spatial dimensions N."""
        return len(self.input_size)

    @property
    def is_padded(self) -> bool:
        """Whether any side gets padding."""
        return any(before or after for before, after in self.padding)


def make_geometry(
    input_size: Any,
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    padding_mode: str = "zeros",
) -> Geometry:
    """Normalise the arguments of an N-d convolution and compute its sizes (cached).

    N is the length of ``input_size`` (the spatial sizes only). Every other argument is an int,
    a tuple of 1 or N ints, and for padding also 'same', 'valid' or N (before, after) pairs.

    >>> make_geometry((5,), kernel_size=4, padding="same").padding
    ((1, 2),)
    >>> make_geometry((2, 2), kernel_size=3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    anyconv.errors.ArgumentError: kernel_size=(3, 3) is invalid: expected a kernel that fits the padded...
    """
    if not is_sequence(input_size) or not input_size:
        raise invalid("input_size", input_size, "a non-empty tuple of spatial sizes")
    sizes = tuple(as_size("input_size", size) for size in input_size)
    # one comparison per size: min() would compare symbolic sizes with each other (a guard)
    if any(size < 0 for size in sizes):
        raise invalid("input_size", input_size, "non-negative sizes")
    ndim = len(sizes)
    kernel = spatial_tuple("kernel_size", kernel_size, ndim, 1)
    steps = spatial_tuple("stride", stride, ndim, 1)
    dilations = spatial_tuple("dilation", dilation, ndim, 1)
    pairs = padding_pairs(padding, ndim, kernel, dilations, steps)
    arguments = (sizes, kernel, steps, pairs, dilations, check_padding_mode(padding_mode))
    # a trace's sizes may be symbolic, which cannot be hashed: its geometry is made anew
    return _geometry(*arguments) if is_traced(sizes) else _cached_geometry(*arguments)


def _geometry(
    input_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: PaddingPairs,
    dilation: tuple[int, ...],
    padding_mode: str,
) -> Geometry:
    geometry = Geometry(input_size, kernel_size, stride, padding, dilation, padding_mode)
    if any(span > padded for span, padded in zip(geometry.field_span, geometry.padded_size)):
        raise invalid(
            "kernel_size",
            kernel_size,
            f"a kernel that fits the padded input: with dilation {dilation} it spans "
            f"{geometry.field_span}, the padded input is {geometry.padded_size}",
        )
    _check_padding_fits_mode(geometry)
    return geometry


_cached_geometry = lru_cache(maxsize=4096)(_geometry)


def _check_padding_fits_mode(geometry: Geometry) -> None:
    # The limits torch's own padding enforces: a reflection needs a pixel beyond the border it
    # mirrors, a circular wrap may not go around more than once, replication needs one pixel.
    mode = geometry.padding_mode
    if mode == "zeros" or not geometry.is_padded:
        return
    for size, (before, after) in zip(geometry.input_size, geometry.padding):
        largest = max(before, after)
        if mode == "reflect" and largest >= size:
            raise ArgumentError(
                f"padding={geometry.padding!r} is invalid with padding_mode='reflect': each amount "
                "must be smaller than the input size along its dimension, "
                f"got input size {geometry.input_size}"
            )
        if mode == "circular" and largest > size:
            raise ArgumentError(
                f"padding={geometry.padding!r} is invalid with padding_mode='circular': each amount "
                f"must be at most the input size along its dimension, got input size {geometry.input_size}"
            )
        if mode == "replicate" and size == 0:
            raise ArgumentError(
                f"input_size={geometry.input_size!r} is invalid with padding_mode='replicate': "
                "expected at least one element along each padded dimension"
            )
