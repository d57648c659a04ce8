"""Sizes of the transposed convolution: its output size, torch's output_padding rule, and its phases
(the stride-1 convolutions that compute it, one per output residue modulo the stride)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import invalid
from .arguments import spatial_tuple


def transposed_output_size(
    input_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    output_padding: Any,
    dilation: tuple[int, ...],
) -> tuple[int, ...]:
    """``(in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1`` per dimension.

    torch's rule: each output_padding must be smaller than its stride or its dilation.

    >>> transposed_output_size((4, 4), (3, 3), (2, 2), (1, 1), 1, (1, 1))
    (8, 8)
    """
    ndim = len(input_size)
    extra = spatial_tuple("output_padding", output_padding, ndim, 0)
    for amount, step, spacing in zip(extra, stride, dilation):
        if amount >= step and amount >= spacing:
            raise invalid(
                "output_padding",
                output_padding,
                f"values smaller than either stride {stride} or dilation {dilation}",
            )
    sizes = tuple(
        (size - 1) * step - 2 * pad + spacing * (kernel - 1) + more + 1
        for size, kernel, step, pad, more, spacing in zip(
            input_size, kernel_size, stride, padding, extra, dilation
        )
    )
    if min(sizes) < 1:
        raise invalid(
            "padding", padding, f"an amount that leaves a positive output size, got output size {sizes}"
        )
    return sizes


@dataclass(frozen=True)
class Phase:
    """One phase of a transposed convolution: the output positions ``outputs`` (``r::stride``
    per dimension), computed as a stride-1 convolution of ``input[crop]`` with ``padding``
    (before, after pairs) and ``dilation``, by the kernel taps ``taps`` flipped."""

    outputs: tuple[slice, ...]
    taps: tuple[slice, ...]
    crop: tuple[slice, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]


@dataclass(frozen=True)
class _Residue:
    """One dimension of a phase (the fields of :class:`Phase`, for one dimension)."""

    outputs: slice
    taps: slice
    crop: slice
    padding: tuple[int, int]
    dilation: int


@lru_cache(maxsize=1024)
def transposed_phases(
    input_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    output_size: tuple[int, ...],
) -> tuple[Phase, ...]:
    """The phases that cover every output position some kernel tap reaches from the input.

    Output ``o = q * stride + r`` receives, from tap ``k`` with ``r + padding - k * dilation``
    divisible by the stride, the input at ``q + (r + padding - k * dilation) / stride``. The taps
    of one residue ``r`` are every ``stride / g``-th (``g = gcd(stride, dilation)``), their
    offsets every ``dilation / g``-th: a stride-1 convolution with the taps flipped and dilation
    ``dilation / g``. Positions in no phase (residues no tap reaches, or whose taps read only
    padding) get no input at all. At most ``prod(min(kernel, stride))`` phases, none empty.

    >>> [(p.outputs, p.taps, p.padding) for p in transposed_phases((4,), (4,), (2,), (1,), (1,), (8,))]
    [((slice(0, 8, 2),), (slice(1, 4, 2),), ((1, 0),)), ((slice(1, 8, 2),), (slice(0, 3, 2),), ((0, 1),))]
    >>> transposed_phases((3,), (1,), (3,), (0,), (1,), (7,))[0].outputs
    (slice(0, 7, 3),)
    """
    per_dimension = [
        _residues(*sizes) for sizes in zip(input_size, kernel_size, stride, padding, dilation, output_size)
    ]
    return tuple(
        Phase(
            tuple(part.outputs for part in parts),
            tuple(part.taps for part in parts),
            tuple(part.crop for part in parts),
            tuple(part.padding for part in parts),
            tuple(part.dilation for part in parts),
        )
        for parts in itertools.product(*per_dimension)
    )


def _residues(size: int, kernel: int, step: int, pad: int, spacing: int, output: int) -> list[_Residue]:
    """The residues of one dimension that some tap reaches and whose taps read some input."""
    common = math.gcd(step, spacing)
    tap_step, offset_step = step // common, spacing // common
    first_taps: dict[int, int] = {}
    for tap in range(min(kernel, tap_step)):
        first_taps.setdefault((tap * spacing - pad) % step, tap)
    residues = []
    for residue, first in sorted(first_taps.items()):
        if residue >= output:
            continue
        count = (kernel - 1 - first) // tap_step + 1
        outputs = (output - residue + step - 1) // step
        # the input index read by output q through the first tap: q + offset
        offset = (residue + pad - first * spacing) // step
        # the input window the phase reads, zeros outside [0, size)
        start, stop = offset - (count - 1) * offset_step, outputs + offset
        if max(start, 0) >= min(stop, size):
            continue
        residues.append(
            _Residue(
                slice(residue, output, step),
                slice(first, first + (count - 1) * tap_step + 1, tap_step),
                slice(max(start, 0), min(stop, size)),
                (max(-start, 0), max(stop - size, 0)),
                offset_step,
            )
        )
    return residues
