"""Triton kernels that read the taps straight from the zero-padded input (implicit im2col), any N.

A table of K tap offsets and one of L position offsets locate every tap of every field in the
padded input, so no (positions x taps) fields are ever copied; on CPU tensors they run through
Triton's interpreter. The engine's path (``engine/triton_conv.py``) pads, builds the tables, calls.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import torch

from .triton_backend import record_triton_call
from .triton_kernels import _interpreting, _settings

try:
    import triton
    import triton.language as tl
except ImportError:  # importable without triton; the engine only calls in where it is installed
    triton = tl = None

#: the rules one kernel computes, chosen at compile time; ADDER is l1 with AdderNet's gradients
DOT, L1, ADDER, L2, POWER, MAX_PLUS, MIN_PLUS = range(7)
TROPICAL = (MAX_PLUS, MIN_PLUS)
#: a tile's elements, a (positions, filters, taps) tile's, and the widest tile along filters or taps
_TILE, _TILE_3D, _WIDEST = 1024, 4096, 32
#: a weight-gradient program streams at least this many positions (fewer programs, fewer partials)
POSITIONS_PER_PROGRAM = 256
#: the weight-gradient programs aimed at, before the positions are split no further
_PROGRAMS = 512


@dataclass(frozen=True)
class Layout:
    """Where the taps are: one sample's padded input holds ``channels`` planes of ``plane`` elements;
    ``groups`` groups of ``outputs`` filters of ``taps`` taps; ``locations`` output positions."""

    channels: int
    plane: int
    groups: int
    outputs: int
    taps: int
    locations: int


def tables(
    padded_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    output_size: tuple[int, ...],
    channels_per_group: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tap offsets (K,), position offsets (L,)) into one group's padded input, int64 on ``device``.

    Taps in the engine's order (kernel, then channel: the first of tied taps wins on every path);
    positions in the output's (row-major).

    >>> taps, positions = tables((4, 4), (2, 2), (2, 2), (1, 1), (2, 2), 1, torch.device("cpu"))
    >>> taps.tolist(), positions.tolist()
    ([0, 1, 4, 5], [0, 2, 8, 10])
    """
    return _tables(padded_size, kernel_size, stride, dilation, output_size, channels_per_group, device)


@lru_cache(maxsize=256)
def _tables(
    padded_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    output_size: tuple[int, ...],
    channels_per_group: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    # kept per device: a copy to the GPU at every call would wait for the GPU's queue
    steps = [math.prod(padded_size[axis + 1 :]) for axis in range(len(padded_size))]

    def offsets(sizes: tuple[int, ...], spacings: list[int]) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.int64)
        for size, spacing in zip(sizes, spacings):
            total = total[..., None] + torch.arange(size, dtype=torch.int64) * spacing
        return total.reshape(-1)

    kernel = offsets(kernel_size, [spacing * step for spacing, step in zip(dilation, steps)])
    channels = torch.arange(channels_per_group, dtype=torch.int64) * math.prod(padded_size)
    positions = offsets(output_size, [step * size for step, size in zip(stride, steps)])
    return (kernel[:, None] + channels).reshape(-1).to(device), positions.to(device)


def _forward_kernel(
    padded,
    weight,
    output,
    taps_won,
    tap_offsets,
    positions,
    settings,
    rows,
    locations,
    outputs,
    taps,
    channels,
    group_channels,
    plane,
    RULE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    """One (positions tile, filters tile, group): the tap loop of one rule, the winning tap when tropical."""
    group = tl.program_id(2).to(tl.int64)
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    column = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    row_ok, column_ok = row < rows, column < outputs
    sample, location = (row // locations).to(tl.int64), row % locations
    field_start = padded + (sample * channels + group * group_channels) * plane
    field_start += tl.load(positions + location, mask=row_ok, other=0)
    channel = group * outputs + column.to(tl.int64)
    filter_start = weight + channel * taps
    # settings: the starting value (0, -inf or inf) and the power, in the summing dtype
    power = tl.load(settings + 1)
    best = tl.full((BLOCK_M, BLOCK_O), 0, settings.dtype.element_ty) + tl.load(settings)
    won = tl.full((BLOCK_M, BLOCK_O), 0, tl.int32)
    for tap in range(taps):
        p = tl.load(field_start + tl.load(tap_offsets + tap), mask=row_ok, other=0.0)
        w = tl.load(filter_start + tap, mask=column_ok, other=0.0)
        if UPCAST:
            p, w = p.to(tl.float32), w.to(tl.float32)
        if RULE == 5:
            value = p[:, None] + w[None, :]
            # NaN wins over every number and the first NaN stays: the naive max's answer
            wins = (value > best) | ((value != value) & (best == best))
            best = tl.where(wins, value, best)
            won = tl.where(wins, tap, won)
        elif RULE == 6:
            value = p[:, None] - w[None, :]
            wins = (value < best) | ((value != value) & (best == best))
            best = tl.where(wins, value, best)
            won = tl.where(wins, tap, won)
        elif RULE == 0:
            best += p[:, None] * w[None, :]
        elif RULE == 3:
            difference = p[:, None] - w[None, :]
            best -= difference * difference
        elif RULE == 4:
            magnitude = tl.abs(p[:, None] - w[None, :])
            # |e|^p is 0 at e = 0 for every p, and NaN stays NaN
            raised = tl.exp2(power * tl.log2(tl.where(magnitude > 0, magnitude, 1.0)))
            best += tl.where(magnitude > 0, raised, tl.where(magnitude == 0, 0.0, magnitude))
        else:
            best -= tl.abs(p[:, None] - w[None, :])
    # the grid's third axis is the groups: outputs * groups channels in the output
    at = (sample * outputs * tl.num_programs(2) * locations + location)[:, None] + channel[
        None, :
    ] * locations
    both_ok = row_ok[:, None] & column_ok[None, :]
    tl.store(output + at, best, mask=both_ok)
    if RULE >= 5:
        tl.store(taps_won + at, won, mask=both_ok)


def _input_gradient_kernel(
    padded,
    weight,
    grad,
    taps_won,
    grad_padded,
    tap_offsets,
    positions,
    settings,
    rows,
    locations,
    outputs,
    taps,
    channels,
    group_channels,
    plane,
    RULE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One (positions tile, taps tile, group): sum over the group's filters of d(output)/d(tap)
    times the output's gradient, added atomically where the tap sits in the padded input."""
    group = tl.program_id(2).to(tl.int64)
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tap = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok, tap_ok = row < rows, tap < taps
    both_ok = row_ok[:, None] & tap_ok[None, :]
    sample, location = (row // locations).to(tl.int64), row % locations
    place = (sample * channels + group * group_channels) * plane
    place += tl.load(positions + location, mask=row_ok, other=0)
    at = place[:, None] + tl.load(tap_offsets + tap, mask=tap_ok, other=0)[None, :]
    p = tl.load(padded + at, mask=both_ok, other=0.0)
    if UPCAST:
        p = p.to(tl.float32)
    power = tl.load(settings + 1)
    total = tl.full((BLOCK_M, BLOCK_K), 0, settings.dtype.element_ty)
    # the grid's third axis is the groups: outputs * groups channels in the output
    grad_at = sample * outputs * tl.num_programs(2) * locations + location
    for filter in range(outputs):
        channel = group * outputs + filter
        g = tl.load(grad + grad_at + channel * locations, mask=row_ok, other=0.0)
        w = tl.load(weight + channel * taps + tap, mask=tap_ok, other=0.0)
        if UPCAST:
            g, w = g.to(tl.float32), w.to(tl.float32)
        difference = p - w[None, :]
        if RULE == 0:
            total += w[None, :] * g[:, None]
        elif RULE == 1:
            spread = tl.broadcast_to(g[:, None], (BLOCK_M, BLOCK_K))
            # where, not a product with sign(): a zero difference gives 0 even against inf
            total -= tl.where(difference > 0, spread, tl.where(difference < 0, -spread, 0.0))
        elif RULE == 2:
            # HardTanh, NaN passing through as torch's clamp lets it
            clipped = tl.where(difference > 1, 1.0, tl.where(difference < -1, -1.0, difference))
            total -= clipped * g[:, None]
        elif RULE == 3:
            total -= 2 * difference * g[:, None]
        elif RULE == 4:
            magnitude = tl.abs(difference)
            exponent = power - 1
            raised = tl.exp2(exponent * tl.log2(tl.where(magnitude > 0, magnitude, 1.0)))
            # sign(e) |e|^(p-1) as the eager path takes it: 0 at e = 0, else torch.pow's
            # (x^0 = 1 for every x, inf and NaN included; NaN^q = NaN otherwise)
            slope = tl.where(magnitude > 0, raised, magnitude)
            slope = tl.where(magnitude == 0, 0.0, tl.where(exponent == 0, 1.0, slope))
            total -= tl.where(difference < 0, -slope, slope) * g[:, None]
        else:
            won = tl.load(taps_won + grad_at + channel * locations, mask=row_ok, other=-1)
            total += tl.where(won[:, None] == tap[None, :], g[:, None], 0.0)
    tl.atomic_add(grad_padded + at, total, mask=both_ok)


def _weight_gradient_kernel(
    padded,
    weight,
    grad,
    taps_won,
    partials,
    tap_offsets,
    positions,
    settings,
    rows,
    locations,
    outputs,
    taps,
    channels,
    group_channels,
    plane,
    rows_per_program,
    RULE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One (filters tile and share of the positions, taps tile, group): the weight gradient's sum
    over those positions, BLOCK_P at a time, into the share's own slice of ``partials``."""
    group = tl.program_id(2).to(tl.int64)
    filter_tiles = (outputs + BLOCK_O - 1) // BLOCK_O
    share = tl.program_id(0) // filter_tiles
    column = (tl.program_id(0) % filter_tiles) * BLOCK_O + tl.arange(0, BLOCK_O)
    tap = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    column_ok, tap_ok = column < outputs, tap < taps
    both_ok = column_ok[:, None] & tap_ok[None, :]
    channel = group * outputs + column.to(tl.int64)
    w = tl.load(weight + channel[:, None] * taps + tap[None, :], mask=both_ok, other=0.0)
    if UPCAST:
        w = w.to(tl.float32)
    tap_at = tl.load(tap_offsets + tap, mask=tap_ok, other=0)
    group_start = group * group_channels * plane
    power = tl.load(settings + 1)
    total = tl.full((BLOCK_O, BLOCK_K), 0, settings.dtype.element_ty)
    first = share * rows_per_program
    last = tl.minimum(first + rows_per_program, rows)
    for start in range(first, last, BLOCK_P):
        # (positions, filters, taps) tiles: many positions at once where the filters are few (depthwise)
        row = start + tl.arange(0, BLOCK_P)
        row_ok = row < last
        sample, location = (row // locations).to(tl.int64), row % locations
        place = sample * channels * plane + group_start + tl.load(positions + location, mask=row_ok, other=0)
        p = tl.load(
            padded + place[:, None] + tap_at[None, :], mask=row_ok[:, None] & tap_ok[None, :], other=0.0
        )
        # the grid's third axis is the groups: outputs * groups channels in the output
        grad_at = (sample * outputs * tl.num_programs(2) * locations + location)[:, None] + channel[
            None, :
        ] * locations
        pair_ok = row_ok[:, None] & column_ok[None, :]
        g = tl.load(grad + grad_at, mask=pair_ok, other=0.0)
        if UPCAST:
            p, g = p.to(tl.float32), g.to(tl.float32)
        difference = p[:, None, :] - w[None, :, :]
        spread = tl.broadcast_to(g[:, :, None], (BLOCK_P, BLOCK_O, BLOCK_K))
        if RULE == 0:
            term = p[:, None, :] * spread
        elif RULE == 1:
            term = tl.where(difference > 0, spread, tl.where(difference < 0, -spread, 0.0))
        elif RULE == 2:
            # AdderNet's full-precision filter gradient: p - w in place of sign(p - w)
            term = difference * spread
        elif RULE == 3:
            term = 2 * difference * spread
        elif RULE == 4:
            magnitude = tl.abs(difference)
            exponent = power - 1
            raised = tl.exp2(exponent * tl.log2(tl.where(magnitude > 0, magnitude, 1.0)))
            slope = tl.where(magnitude > 0, raised, magnitude)
            slope = tl.where(magnitude == 0, 0.0, tl.where(exponent == 0, 1.0, slope))
            term = tl.where(difference < 0, -slope, slope) * spread
        else:
            won = tl.load(taps_won + grad_at, mask=pair_ok, other=-1)
            term = tl.where(won[:, :, None] == tap[None, None, :], spread, 0.0)
            if RULE == 6:
                term = -term
        # the rows past the share are masked out, not zero: an inf filter times a zero is NaN
        # tl.sum is itself a jitted function, which the per-call interpreter cannot call; reduce is not
        total += tl.reduce(tl.where(row_ok[:, None, None], term, 0.0), 0, tl.standard._sum_combine)
    at = ((share * tl.num_programs(2) + group) * outputs + column.to(tl.int64))[:, None] * taps + tap[None, :]
    tl.store(partials + at, total, mask=both_ok)


@cache
def _kernels(interpret: bool) -> dict[str, Any]:
    """The kernels compiled for the GPU, or (``interpret``) run by Triton's CPU interpreter."""
    with _interpreting(interpret):
        return {
            "forward": triton.jit(_forward_kernel),
            "input_gradient": triton.jit(_input_gradient_kernel),
            "weight_gradient": triton.jit(_weight_gradient_kernel),
        }


def _launch(
    name: str, device: torch.device, grid: tuple[int, ...], *args: object, **constants: object
) -> None:
    """Run one kernel: compiled on CUDA, interpreted on every other device."""
    interpret = device.type != "cuda"
    # Triton launches on the current CUDA device: make it the tensors' own
    on_device = nullcontext() if interpret else torch.cuda.device(device)
    with _interpreting(interpret), on_device:
        _kernels(interpret)[name][grid](*args, **constants)


def _width(count: int) -> int:
    """A tile's width along ``count`` columns: narrow when they are few (one filter per group in a
    depthwise layer), so that the tile's lanes are not spent on masked-off columns."""
    return min(_WIDEST, triton.next_power_of_2(max(count, 1)))


def _summing(tensor: torch.Tensor) -> torch.dtype:
    """Half-precision inputs and float32 are summed in float32, float64 in float64."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _sizes(
    padded: torch.Tensor, layout: Layout, offsets: tuple[torch.Tensor, torch.Tensor], settings: torch.Tensor
) -> tuple:
    """The arguments every kernel takes after its tensors, in order."""
    group_channels = layout.channels // layout.groups
    rows = padded.shape[0] * layout.locations
    return (
        *offsets,
        settings,
        rows,
        layout.locations,
        layout.outputs,
        layout.taps,
        layout.channels,
        group_channels,
        layout.plane,
    )


def implicit_forward(
    padded: torch.Tensor,
    weight: torch.Tensor,
    layout: Layout,
    offsets: tuple[torch.Tensor, torch.Tensor],
    rule: int,
    power: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw outputs (B, O, L), winning taps (B, O, L) int32 when tropical, else empty).

    Raw: ``sum p*w``, ``-sum |p-w|``, ``-sum (p-w)^2``, ``sum |p-w|^power``, ``max (p+w)`` or
    ``min (p-w)``. ``padded`` is (B, C, *padded) contiguous, ``weight`` (O, taps) contiguous with
    its taps in the tables' order, ``offsets`` those of :func:`tables`.

    >>> x, w = torch.tensor([[[1.0, 2.0, 4.0]]]), torch.tensor([[0.0, 1.0]])
    >>> layout = Layout(channels=1, plane=3, groups=1, outputs=1, taps=2, locations=2)
    >>> tap_tables = tables((3,), (2,), (1,), (1,), (2,), 1, x.device)
    >>> implicit_forward(x, w, layout, tap_tables, L1, 1.0)[0]
    tensor([[[-2., -5.]]])
    """
    batch = padded.shape[0]
    output = padded.new_empty((batch, layout.groups * layout.outputs, layout.locations))
    taps_won = torch.empty(
        output.shape if rule in TROPICAL else (0,), dtype=torch.int32, device=padded.device
    )
    record_triton_call()
    if output.numel() == 0:  # a grid of no programs is not a valid launch
        return output, taps_won
    start = {MAX_PLUS: float("-inf"), MIN_PLUS: float("inf")}.get(rule, 0.0)
    block_o = _width(layout.outputs)
    block_m = _TILE // block_o
    grid = (
        triton.cdiv(batch * layout.locations, block_m),
        triton.cdiv(layout.outputs, block_o),
        layout.groups,
    )
    sizes = _sizes(padded, layout, offsets, _settings(padded, start, power))
    _launch(
        "forward", padded.device, grid, padded, weight, output, taps_won, *sizes,
        RULE=rule, UPCAST=padded.dtype != torch.float64, BLOCK_M=block_m, BLOCK_O=block_o,
    )  # fmt: skip
    return output, taps_won


def implicit_backward(
    padded: torch.Tensor,
    weight: torch.Tensor,
    grad: torch.Tensor,
    taps_won: torch.Tensor,
    layout: Layout,
    offsets: tuple[torch.Tensor, torch.Tensor],
    rule: int,
    power: float,
    needs: tuple[bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(gradient of the padded input, of the weight (O, taps)), each None unless ``needs`` says.

    ``grad`` is the raw outputs' gradient (B, O, L) contiguous; ``taps_won`` the forward's winners
    for a tropical rule. Both sums are in the summing dtype, cast to the inputs' at the end. The
    input gradient adds atomically (its order, so its last bits, may vary on a GPU); the weight
    gradient sums fixed shares of the positions in a fixed order.

    >>> x, w = torch.tensor([[[1.0, 2.0, 4.0]]]), torch.tensor([[0.0, 1.0]])
    >>> layout = Layout(channels=1, plane=3, groups=1, outputs=1, taps=2, locations=2)
    >>> tap_tables = tables((3,), (2,), (1,), (1,), (2,), 1, x.device)
    >>> g, no_winners = torch.ones(1, 1, 2), x.new_empty(0)
    >>> implicit_backward(x, w, g, no_winners, layout, tap_tables, L1, 1.0, (True, True))
    (tensor([[[-1., -2., -1.]]]), tensor([[2., 2.]]))
    """
    record_triton_call()
    summing = torch.float64 if padded.dtype == torch.float64 else torch.float32
    sizes = _sizes(padded, layout, offsets, _settings(padded, 0.0, power))
    constants = dict(RULE=rule, UPCAST=padded.dtype != torch.float64)
    rows = padded.shape[0] * layout.locations
    work = rows and layout.outputs and layout.taps
    block_k = _width(layout.taps)
    grad_padded = grad_weight = None
    if needs[0]:
        grad_padded = torch.zeros(padded.shape, dtype=summing, device=padded.device)
        if work:
            block_m = _TILE // block_k
            grid = (triton.cdiv(rows, block_m), triton.cdiv(layout.taps, block_k), layout.groups)
            _launch(
                "input_gradient", padded.device, grid, padded, weight, grad, taps_won, grad_padded, *sizes,
                **constants, BLOCK_M=block_m, BLOCK_K=block_k,
            )  # fmt: skip
        grad_padded = grad_padded.to(padded.dtype)
    if needs[1]:
        block_o = _width(layout.outputs)
        tiles = triton.cdiv(layout.outputs, block_o) * triton.cdiv(layout.taps, block_k) * layout.groups
        shares = max(1, min(triton.cdiv(rows, POSITIONS_PER_PROGRAM), _PROGRAMS // max(tiles, 1)))
        rows_per_program = triton.cdiv(max(rows, 1), shares)
        partials = torch.zeros((shares, *weight.shape), dtype=summing, device=padded.device)
        if work:
            filter_tiles = triton.cdiv(layout.outputs, block_o)
            grid = (filter_tiles * shares, triton.cdiv(layout.taps, block_k), layout.groups)
            _launch(
                "weight_gradient", padded.device, grid, padded, weight, grad, taps_won, partials, *sizes,
                rows_per_program, **constants, BLOCK_P=_TILE_3D // (block_o * block_k), BLOCK_O=block_o,
                BLOCK_K=block_k,
            )  # fmt: skip
        # the shares' partial sums add up in a fixed order: the weight gradient is deterministic
        grad_weight = partials.sum(0).to(weight.dtype)
    return grad_padded, grad_weight
