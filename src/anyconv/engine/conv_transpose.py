"""``conv_transpose``: the transposed convolution as stride-1 convolutions, one per output phase.

A transposed convolution of stride s writes output ``o = q * s + r`` from the input near ``q``
through the kernel taps of residue r only, so the output positions of one residue (a "phase",
per dimension) are an ordinary stride-1 convolution of the input with those taps, flipped, their
in and out channels swapped per group, and dilation ``dilation / gcd(dilation, s)``; its padding
(cropping where negative) comes from the residue (``geometry.transposed_phases``). Each phase
runs through the engine's own convolution, which chunks it under the memory budget along any
spatial dimension, and is written into the strided view ``output[..., r::s]``. No column matrix
(out_channels x kernel taps per input position) and no col2im are made, the work is that of the
convolution of the same geometry (no products with the zeros a stride inserts), and gradients
of any order come from autograd through the engine and the strided writes.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import invalid
from ..functional.allocation import check_fits
from ..geometry import Phase, spatial_tuple, transposed_output_size, transposed_phases
from .arguments import check_conv_tensors
from .conv import conv
from .ops_autocast import autocast_dtype, cast
from .ops_memory_format import output_memory_format


def conv_transpose(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    *,
    memory_budget: int | None = None,
) -> torch.Tensor:
    """``F.conv_transpose1d/2d/3d`` for any N (``weight.dim() - 2``), as one convolution per phase.

    ``weight`` is (in_channels, out_channels // groups, *kernel_size), as in torch. The output
    size is ``(in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1``;
    ``output_padding`` must be smaller than the stride or the dilation, as torch requires. The
    output positions ``r::stride`` (per dimension) are a stride-1 :func:`anyconv.conv` of the
    input with the kernel taps that reach them (at most ``prod(min(kernel, stride))`` phases;
    positions no tap reaches get the bias alone), each chunked by :func:`anyconv.conv` under
    ``memory_budget`` bytes along samples and any spatial dimension. Gradients come from
    autograd, twice differentiable. Under ``torch.autocast`` it runs in autocast's dtype, and a
    channels-last input or weight gives a channels-last output, as torch's does.

    >>> import torch, torch.nn.functional as F
    >>> x, w = torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    >>> y = conv_transpose(x, w, stride=2, padding=1, output_padding=1)
    >>> y.shape, torch.allclose(y, F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1))
    (torch.Size([2, 3, 10, 10]), True)
    """
    ndim, groups = check_conv_tensors(input, weight, bias, groups, transposed=True)
    lowered = autocast_dtype(input)
    if lowered is not None:
        # torch's policy for convolutions: run in autocast's dtype, with autocast off inside
        with torch.autocast(input.device.type, enabled=False):
            return conv_transpose(
                cast(input, lowered),
                cast(weight, lowered),
                cast(bias, lowered),
                stride,
                padding,
                output_padding,
                groups,
                dilation,
                memory_budget=memory_budget,
            )
    was_unbatched = input.dim() == ndim + 1
    batched = input.unsqueeze(0) if was_unbatched else input
    kernel_size = tuple(weight.shape[2:])
    steps = spatial_tuple("stride", stride, ndim, 1)
    if isinstance(padding, str):
        raise invalid("padding", padding, f"an int or a tuple of {ndim} ints (no strings when transposed)")
    amounts = spatial_tuple("padding", padding, ndim, 0)
    spacings = spatial_tuple("dilation", dilation, ndim, 1)
    # checks output_padding against torch's rule and that the output is not empty
    output_size = transposed_output_size(
        tuple(batched.shape[2:]), kernel_size, steps, amounts, output_padding, spacings
    )
    out_channels = weight.shape[1] * groups
    output_shape = (batched.shape[0], out_channels, *output_size)
    # what made the output that large: a stride or a dilation that spreads it, else the kernel
    spread = ("stride", stride) if max(steps) > 1 else ("dilation", dilation) if max(spacings) > 1 else None
    check_fits("the output", output_shape, batched, spread or ("weight", weight))
    phases = transposed_phases(tuple(batched.shape[2:]), kernel_size, steps, amounts, spacings, output_size)
    channels = batched.shape[1]
    # (C, Og, *kernel) -> (O, Cg, *kernel), flipped once: the filters of every phase's convolution
    filters = (
        weight.reshape(groups, channels // groups, weight.shape[1], *kernel_size)
        .transpose(1, 2)
        .reshape(out_channels, channels // groups, *kernel_size)
        .flip(tuple(range(2, ndim + 2)))
    )
    layout = output_memory_format(batched, weight)
    places = tuple(phase.outputs for phase in phases)
    covered = _count(places, output_size) == math.prod(output_size)
    if not phases:
        # no tap reaches the output: keep input and weight in the graph, with zero
        # gradients as torch gives, through sums of nothing (no NaN or inf gets in)
        nothing = batched.reshape(-1)[:0].sum() + weight.reshape(-1)[:0].sum()
        output = batched.new_zeros(output_shape).contiguous(memory_format=layout) + nothing
    elif len(phases) == 1 and covered:
        output = _phase(batched, filters, bias, phases[0], groups, memory_budget)
    else:
        # the bias goes with each phase's convolution, unless some positions are in no phase
        computed = [
            _phase(batched, filters, bias if covered else None, phase, groups, memory_budget)
            for phase in phases
        ]
        output = _Interleave.apply(output_shape, layout, places, *computed)
    if bias is not None and not covered:
        output = output + bias.reshape(-1, *(1,) * ndim)
    output = output.contiguous(memory_format=layout)
    return output.squeeze(0) if was_unbatched else output


def _phase(
    batched: torch.Tensor,
    filters: torch.Tensor,
    bias: torch.Tensor | None,
    phase: Phase,
    groups: int,
    memory_budget: int | None,
) -> torch.Tensor:
    """The output positions of one phase: a stride-1 convolution with its taps (of the flipped filters)."""
    flipped = tuple(
        slice(kernel - part.stop, kernel - part.start, part.step)
        for part, kernel in zip(phase.taps, filters.shape[2:])
    )
    taps = filters[(slice(None), slice(None), *flipped)]
    window = batched[(slice(None), slice(None), *phase.crop)]
    return conv(
        window,
        taps,
        bias,
        padding=phase.padding,
        dilation=phase.dilation,
        groups=groups,
        memory_budget=memory_budget,
    )


def _count(places: tuple[tuple[slice, ...], ...], output_size: tuple[int, ...]) -> int:
    """How many output positions the (disjoint) phases write."""
    return sum(
        math.prod(len(range(size)[part]) for part, size in zip(place, output_size)) for place in places
    )


class _Interleave(torch.autograd.Function):
    """The phases written into their strided views of one output, zeros elsewhere; the backward
    hands each phase its strided view of the gradient (no full-size copy, unlike in-place writes
    under autograd, which copy the whole gradient once per write)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        shape: tuple[int, ...],
        layout: torch.memory_format,
        places: tuple[tuple[slice, ...], ...],
        *phases: torch.Tensor,
    ) -> torch.Tensor:
        output = torch.empty(shape, dtype=phases[0].dtype, device=phases[0].device, memory_format=layout)
        if _count(places, shape[2:]) < math.prod(shape[2:]):
            output.zero_()
        for place, phase in zip(places, phases):
            output[(slice(None), slice(None), *place)] = phase
        return output

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.places = inputs[2]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (None, None, None, *(grad[(slice(None), slice(None), *place)] for place in ctx.places))
