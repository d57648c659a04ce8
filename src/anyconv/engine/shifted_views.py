"""Fields as shifted views: the standard convolution as one matrix product per kernel tap, no field copies.

A sample's zero-padded input, each channel flattened, already holds every tap of every receptive
field: for stride 1, tap t of the field at flat position k is element ``k + shift(t)`` of each
channel, so the columns ``shift(t) .. shift(t) + R`` are a zero-copy (C, R) matrix with leading
dimension prod(padded size), a valid BLAS operand. The output is the sum over taps of
``filters_t @ columns_t`` on the grid of all padded positions, of which the positions whose field
would run past the edge are dropped. A stride s first splits the input into its prod(s) phases
(pixel ``s * i + p`` goes to phase p, place i), one copy of the input, after which every tap reads
one phase at stride 1. Backward runs the transposed products on the same views.

The engine uses these views for the backward pass only: its forward copies the fields as rows
and takes one product per chunk (``TapwisePlan.fields_plan``), which measured faster (forward
of (32, 64, 32, 32) -> 64, 3x3, timed in turn with F.conv2d: 1.06x against 1.39x its time),
while the backward's tap products spare the fold of the field gradients (forward+backward 1.64x
against 1.80x with copied fields both ways). Without a fields plan the forward runs the tap
products too; the tests use that to check the tap layout against torch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from ..geometry import Geometry
from .chunks import Chunk
from .contraction import Plan, bias_grad, contract_chunks, copy_with_bias
from .fields import add_image_grad, chunk_image


@dataclass(frozen=True)
class TapLayout:
    """Where each kernel tap's columns start in one sample's phase-split input; pure integers.

    ``geometry`` is a chunk's (unpadded slab) geometry.

    >>> from anyconv.geometry import make_geometry
    >>> layout = TapLayout(make_geometry((6, 6), 3, stride=2))
    >>> layout.phase_size, layout.taps[:3], layout.columns
    ((3, 3), ((0, 0), (1, 0), (0, 1)), 5)
    """

    geometry: Geometry
    # Derived once in __post_init__, not as cached_property: its lock breaks torch.compile graphs.
    phase_size: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """Places per phase along each dimension (the output grid): ceil(slab size / stride)."""
    places: int = field(init=False, repr=False, compare=False)
    """Positions of one phase, the length of its flattened channels."""
    phases: int = field(init=False, repr=False, compare=False)
    """How many phases the stride splits the input into: prod(stride)."""
    taps: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    """(phase, shift in flat places) of each kernel tap, in the weight's tap order."""
    columns: int = field(init=False, repr=False, compare=False)
    """R, the grid positions each tap's view covers: every one whose taps all stay in the input."""

    def __post_init__(self) -> None:
        geometry = self.geometry
        phase_size = tuple(-(-size // step) for size, step in zip(geometry.input_size, geometry.stride))
        place_strides = [math.prod(phase_size[axis + 1 :]) for axis in range(geometry.ndim)]
        taps = []
        for tap in itertools.product(*(range(kernel) for kernel in geometry.kernel_size)):
            offsets = [index * spacing for index, spacing in zip(tap, geometry.dilation)]
            phase = 0
            for offset, step in zip(offsets, geometry.stride):
                phase = phase * step + offset % step
            shift = sum(
                offset // step * place_stride
                for offset, step, place_stride in zip(offsets, geometry.stride, place_strides)
            )
            taps.append((phase, shift))
        places = math.prod(phase_size)
        derived = {
            "phase_size": phase_size,
            "places": places,
            "phases": math.prod(geometry.stride),
            "taps": tuple(taps),
            "columns": places - max(shift for _, shift in taps),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)


def _phase_slices(phase: tuple[int, ...], stride: tuple[int, ...]) -> tuple[slice, ...]:
    """The slices of a padded input that form phase ``phase``: every stride-th pixel from it."""
    return tuple(slice(first, None, step) for first, step in zip(phase, stride))


def split_phases(image: torch.Tensor, layout: TapLayout) -> torch.Tensor:
    """A padded (b, C, *slab) input as (phases, b, C, places), zero past the slab's edge.

    For stride 1 there is one phase and this is a view of ``image``.
    """
    samples, channels = image.shape[:2]
    stride = layout.geometry.stride
    if layout.phases == 1:
        return image.reshape(1, samples, channels, layout.places)
    phases = image.new_zeros((layout.phases, samples, channels, *layout.phase_size))
    for index, phase in enumerate(itertools.product(*(range(step) for step in stride))):
        source = image[(slice(None), slice(None), *_phase_slices(phase, stride))]
        phases[(index, slice(None), slice(None), *(slice(0, size) for size in source.shape[2:]))] = source
    return phases.view(layout.phases, samples, channels, layout.places)


def merge_phases(phases: torch.Tensor, layout: TapLayout) -> torch.Tensor:
    """The adjoint of :func:`split_phases`: (phases, b, C, places) back to a (b, C, *slab) input."""
    samples, channels = phases.shape[1:3]
    geometry = layout.geometry
    if layout.phases == 1:
        return phases.view(samples, channels, *geometry.input_size)
    image = phases.new_empty((samples, channels, *geometry.input_size))
    grids = phases.view(layout.phases, samples, channels, *layout.phase_size)
    for index, phase in enumerate(itertools.product(*(range(step) for step in geometry.stride))):
        target = image[(slice(None), slice(None), *_phase_slices(phase, geometry.stride))]
        target.copy_(grids[(index, slice(None), slice(None), *(slice(0, size) for size in target.shape[2:]))])
    return image


def tap_filters(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The weight (O, Cg, *kernel) as one matrix per tap and group: (K, G, Og, Cg), contiguous."""
    out_channels, per_group = weight.shape[:2]
    return weight.reshape(groups, out_channels // groups, per_group, -1).permute(3, 0, 1, 2).contiguous()


def _crop(grid: torch.Tensor, layout: TapLayout) -> torch.Tensor:
    """The outputs (b, O, *out) among a grid (b, O, places) of every padded position."""
    view = grid.view(*grid.shape[:2], *layout.phase_size)
    return view[(slice(None), slice(None), *(slice(0, size) for size in layout.geometry.output_size))]


@dataclass(frozen=True)
class TapwisePlan:
    """What :class:`ShiftedViewsFunction` needs besides tensors.

    ``fields_plan``, when given, makes the forward pass copy fields as rows (one product per
    chunk, see :func:`~anyconv.engine.contraction.contract_chunks`) instead of the tap products.
    """

    geometry: Geometry
    groups: int
    chunks: tuple[Chunk, ...]
    fields_plan: Plan | None = None


class ShiftedViewsFunction(torch.autograd.Function):
    """``conv(input, weight) + bias`` with zero padding; backward as matrix products on shifted views.

    The forward copies fields as rows when ``plan.fields_plan`` is given (the engine's choice),
    else it too runs the tap products. The input is unpadded, or padded already in a non-zero
    mode (then ``plan.geometry`` has no padding). Backward keeps only the input and the weight.
    """

    @staticmethod
    def forward(
        ctx, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: TapwisePlan
    ) -> torch.Tensor:
        ctx.plan = plan
        ctx.save_for_backward(input, weight)
        if plan.fields_plan is not None:
            return contract_chunks(input, weight, bias, plan.fields_plan)
        groups, out_channels = plan.groups, weight.shape[0]
        filters = tap_filters(weight, groups)
        in_group, out_group = weight.shape[1], out_channels // groups
        output = input.new_empty((input.shape[0], out_channels, *plan.geometry.output_size))
        for chunk in plan.chunks:
            layout = TapLayout(chunk.geometry)
            phases = split_phases(chunk_image(input, plan.geometry, chunk), layout)
            samples, width = phases.shape[1], layout.columns
            grid = input.new_empty((samples, out_channels, layout.places))
            for sample, group in itertools.product(range(samples), range(groups)):
                result = grid[sample, group * out_group : (group + 1) * out_group, :width]
                channels = slice(group * in_group, (group + 1) * in_group)
                for tap, (phase, shift) in enumerate(layout.taps):
                    columns = phases[phase, sample, channels, shift : shift + width]
                    result.addmm_(filters[tap, group], columns, beta=0 if tap == 0 else 1)
            per_channel = None if bias is None else bias.view(-1, *(1,) * layout.geometry.ndim)
            copy_with_bias(output[chunk.samples, :, chunk.rows], _crop(grid, layout), per_channel)
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        plan: TapwisePlan = ctx.plan
        input, weight = ctx.saved_tensors
        groups, out_channels = plan.groups, weight.shape[0]
        in_group, out_group = weight.shape[1], out_channels // groups
        needs_input, needs_weight = ctx.needs_input_grad[:2]
        filters = tap_filters(weight, groups)
        grad_input = torch.zeros_like(input) if needs_input else None
        grad_filters = torch.zeros_like(filters) if needs_weight else None
        for chunk in plan.chunks:
            layout = TapLayout(chunk.geometry)
            samples, width = chunk.samples.stop - chunk.samples.start, layout.columns
            grid = grad_output.new_zeros((samples, out_channels, layout.places))
            _crop(grid, layout).copy_(grad_output[chunk.samples, :, chunk.rows])
            phases = split_phases(chunk_image(input, plan.geometry, chunk), layout) if needs_weight else None
            grad_phases = (
                grad_output.new_zeros((layout.phases, samples, input.shape[1], layout.places))
                if needs_input
                else None
            )
            for sample, group in itertools.product(range(samples), range(groups)):
                grad = grid[sample, group * out_group : (group + 1) * out_group, :width]
                channels = slice(group * in_group, (group + 1) * in_group)
                for tap, (phase, shift) in enumerate(layout.taps):
                    if needs_weight:
                        columns = phases[phase, sample, channels, shift : shift + width]
                        grad_filters[tap, group].addmm_(grad, columns.T)
                    if needs_input:
                        grad_columns = grad_phases[phase, sample, channels, shift : shift + width]
                        grad_columns.addmm_(filters[tap, group].T, grad)
            if needs_input:
                add_image_grad(grad_input, merge_phases(grad_phases, layout), plan.geometry, chunk)
        grad_weight = None
        if needs_weight:
            grad_weight = grad_filters.permute(1, 2, 3, 0).reshape(weight.shape)
        grad_bias = bias_grad(grad_output) if ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias, None


#: fewest input channels per group for which the shifted views beat copied fields (measured
#: here, 1 thread: faster at 4 per group, 2x slower depthwise, where each product is 1 x 1)
MIN_CHANNELS_PER_GROUP = 4
#: fewest output positions per sample for which they do: the views cost a Python loop of
#: samples x taps small products, so small images lose (measured here, 2 threads, forward+backward
#: against copied fields: 8x8 4.9x slower, 16x16 1.4x slower, 32x32 even, 64x64 1.07x faster)
MIN_POSITIONS = 1024


def shifted_views_fit(geometry: Geometry, weight: torch.Tensor) -> bool:
    """Whether :class:`ShiftedViewsFunction` is the faster path for this convolution.

    Measured on (32, 64, 32, 32), 3x3: at stride 1 it beats the copied fields by about 1.2x
    to 1.4x; at stride 2 the phase split and the smaller products make it no faster, so it is
    kept for stride 1.

    >>> from anyconv.geometry import make_geometry
    >>> shifted_views_fit(make_geometry((32, 32), 3, padding=1), torch.empty(4, 8, 3, 3))
    True
    >>> shifted_views_fit(make_geometry((8, 8), 3, padding=1), torch.empty(4, 8, 3, 3))
    False
    >>> shifted_views_fit(make_geometry((8, 8), 3, stride=2), torch.empty(4, 8, 3, 3))
    False
    """
    # complex weights take the fields path, whose backward conjugates as torch's does
    return (
        all(step == 1 for step in geometry.stride)
        and weight.shape[1] >= MIN_CHANNELS_PER_GROUP
        and geometry.num_positions >= MIN_POSITIONS
        and not weight.is_complex()
    )
