"""Sizes of the transposed convolution: its output size, torch's output_padding rule, and its phases
(the stride-1 convolutions that compute it, one per output residue modulo the stride)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import invalid
from .arguments import is_traced, spatial_tuple


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
    # one comparison per size: min() would relate the sizes of a trace with each other (a guard)
    if any(size < 1 for size in sizes):
        raise invalid(
            "padding", padding, f"an amount that leaves a positive output size, got output size {sizes}"
        )
    return sizes


@dataclass(frozen=True)
class PhaseGroup:
    """Phases of a transposed convolution whose taps have one shape, computed together: a
    stride-1 convolution of ``input[crop]`` with ``padding`` (before, after pairs) and
    ``dilation`` whose filters are the members' taps (``taps[i]``, flipped) stacked. Member i's
    outputs are the positions ``windows[i]`` of that convolution's output, written to the
    output positions ``places[i]`` (``r::stride`` per dimension)."""

    crop: tuple[slice, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    taps: tuple[tuple[slice, ...], ...]
    windows: tuple[tuple[slice, ...], ...]
    places: tuple[tuple[slice, ...], ...]


@dataclass(frozen=True)
class _Residue:
    """One dimension of a phase: its output positions, kernel taps, and the input window it
    reads, from ``start`` to ``overhang`` past the input's end (zeros outside the input)."""

    place: slice
    taps: slice
    start: int
    overhang: int


def transposed_phase_groups(
    input_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    output_size: tuple[int, ...],
) -> tuple[PhaseGroup, ...]:
    """The phases that cover every output position some kernel tap reaches from the input,
    grouped by the shape of their taps.

    Output ``o = q * stride + r`` receives, from tap ``k`` with ``r + padding - k * dilation``
    divisible by the stride, the input at ``q + (r + padding - k * dilation) / stride``. The taps
    of one residue ``r`` are every ``stride / g``-th (``g = gcd(stride, dilation)``), their
    offsets every ``dilation / g``-th: a stride-1 convolution with the taps flipped and dilation
    ``dilation / g``. Residues with as many taps read windows of the input a few positions
    apart, so one convolution over the union of the windows computes them all. Positions in no
    phase (residues no tap reaches, or whose taps read only padding) get no input at all.

    >>> [group] = transposed_phase_groups((4,), (4,), (2,), (1,), (1,), (8,))
    >>> group.crop, group.padding, group.taps
    ((slice(0, None, None),), ((1, 1),), ((slice(1, 4, 2),), (slice(0, 3, 2),)))
    >>> group.windows, group.places
    (((slice(0, -1, None),), (slice(1, None, None),)), ((slice(0, None, 2),), (slice(1, None, 2),)))
    >>> [len(group.taps) for group in transposed_phase_groups((5, 5), (3, 3), (2, 2), (1, 1), (1, 1), (9, 9))]
    [1, 1, 1, 1]
    """
    arguments = (input_size, kernel_size, stride, padding, dilation, output_size)
    # a trace's sizes may be symbolic, which cannot be hashed: its groups are made anew
    return _phase_groups(*arguments) if is_traced(input_size) else _cached_phase_groups(*arguments)


def _phase_groups(
    input_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    output_size: tuple[int, ...],
) -> tuple[PhaseGroup, ...]:
    """:func:`transposed_phase_groups`, uncached."""
    per_dimension = [
        _groups(*sizes) for sizes in zip(input_size, kernel_size, stride, padding, dilation, output_size)
    ]
    groups = []
    for parts in itertools.product(*per_dimension):
        members = list(itertools.product(*(residues for _, _, _, residues in parts)))
        groups.append(
            PhaseGroup(
                tuple(crop for crop, _, _, _ in parts),
                tuple(pair for _, pair, _, _ in parts),
                tuple(spacing for _, _, spacing, _ in parts),
                tuple(tuple(residue.taps for residue, _ in member) for member in members),
                tuple(tuple(window for _, window in member) for member in members),
                tuple(tuple(residue.place for residue, _ in member) for member in members),
            )
        )
    return tuple(groups)


_cached_phase_groups = lru_cache(maxsize=1024)(_phase_groups)


def _groups(
    size: int, kernel: int, step: int, pad: int, spacing: int, output: int
) -> list[tuple[slice, tuple[int, int], int, list[tuple[_Residue, slice]]]]:
    """One dimension's groups: (crop, padding, dilation, [(residue, window)]) per tap count."""
    common = math.gcd(step, spacing)
    tap_step, offset_step = step // common, spacing // common
    by_count: dict[int, list[_Residue]] = {}
    # the first taps of the residues are 0 .. tap_step - 1, one residue each
    for first in range(min(kernel, tap_step)):
        residue = (first * spacing - pad) % step
        if residue >= output:
            continue
        count = (kernel - 1 - first) // tap_step + 1
        outputs = (output - residue + step - 1) // step
        # the input index read by output q through the first tap: q + offset
        offset = (residue + pad - first * spacing) // step
        start, stop = offset - (count - 1) * offset_step, outputs + offset
        # the window is never empty (one output at least): it meets the input where it starts
        # before its end and ends past its start, one comparison per size (no min() of sizes)
        if start < size and stop > 0:
            taps = slice(first, first + (count - 1) * tap_step + 1, tap_step)
            # slices hold no size (the output's end is None, the window's end is counted back
            # from the input's), so that a trace's symbolic sizes stay out of them
            by_count.setdefault(count, []).append(
                _Residue(slice(residue, None, step), taps, start, stop - size)
            )
    groups = []
    # sorted by plain ints, which torch.compile traces without a graph break
    for count in sorted(by_count):
        residues = sorted(by_count[count], key=lambda residue: residue.place.start)
        start = min(residue.start for residue in residues)
        overhang = max(residue.overhang for residue in residues)
        crop = slice(max(start, 0), overhang if overhang < 0 else None)
        # the convolution over [start, size + overhang) gives residue r the outputs from
        # r.start - start to r.overhang - overhang before its end
        windows = [
            slice(residue.start - start, (residue.overhang - overhang) or None) for residue in residues
        ]
        groups.append((crop, (max(-start, 0), max(overhang, 0)), offset_step, list(zip(residues, windows))))
    return groups
