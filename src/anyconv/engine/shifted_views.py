"""Fields as shifted views: products with each kernel tap on views of the input, no field copies.

A sample's zero-padded input, each channel flattened, already holds every tap of every receptive
field: for stride 1, tap t of the field at flat position k is element ``k + shift(t)`` of each
channel, so the columns ``shift(t) .. shift(t) + R`` are a zero-copy (C, R) matrix with leading
dimension prod(padded size), a valid BLAS operand. A sum over fields of ``a[m] * p_m`` is then the
sum over taps of ``a @ columns_t^T``, and the adjoint, spreading ``sum_o a[m, o] w_o`` back over
the input, adds ``filters_t^T @ a`` into the same views: no fields are copied and none are folded
back. Results live on the grid of all padded positions, of which the positions whose field would
run past the edge are dropped. A stride s first splits the input into its prod(s) phases (pixel
``s * i + p`` goes to phase p, place i), one copy of the input, after which every tap reads one
phase at stride 1.

The engine's backward of the matrix-product variants uses these views
(``anyconv.engine.product_gradients``); its forward copies the fields as rows and takes one
product per chunk, which measured faster (forward of (32, 64, 32, 32) -> 64, 3x3, timed in turn
with F.conv2d: 1.06x against 1.39x its time), so :func:`tap_products`, the standard convolution's
forward on the views, serves the tests (the tap layout at any stride) and ``bench_paths.py``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from ..geometry import Geometry
from ..variants.matrix_products import inner_product_takes
from .blocks import copy_with_bias
from .chunks import Chunk
from .fields import chunk_image


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
        in_phase: tuple[slice, ...] = (slice(None), slice(None), *_phase_slices(phase, stride))
        source = image[in_phase]
        in_grid: tuple[int | slice, ...] = (index, slice(None), slice(None))
        in_grid += tuple(slice(0, size) for size in source.shape[2:])
        phases[in_grid] = source
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
        in_phase: tuple[slice, ...] = (slice(None), slice(None), *_phase_slices(phase, geometry.stride))
        target = image[in_phase]
        in_grid: tuple[int | slice, ...] = (index, slice(None), slice(None))
        in_grid += tuple(slice(0, size) for size in target.shape[2:])
        target.copy_(grids[in_grid])
    return image


def tap_filters(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The weight (O, Cg, *kernel) as one matrix per tap and group: (K, G, Og, Cg), contiguous."""
    out_channels, per_group = weight.shape[:2]
    return weight.reshape(groups, out_channels // groups, per_group, -1).permute(3, 0, 1, 2).contiguous()


def crop(grid: torch.Tensor, layout: TapLayout) -> torch.Tensor:
    """The outputs (b, O, *out) among a grid (b, O, places) of every padded position."""
    view = grid.view(*grid.shape[:2], *layout.phase_size)
    return view[(slice(None), slice(None), *(slice(0, size) for size in layout.geometry.output_size))]


def tap_sums(values: torch.Tensor, layout: TapLayout) -> torch.Tensor:
    """For each output position, the sum of ``values`` (b, G, *slab) over its field's taps: (b, G, *out).

    With ``values`` the squares of a chunk's padded input summed over a group's channels, this
    gives each field's squared norm without copying the fields.
    """
    phases = split_phases(values, layout)
    width = layout.columns
    grid = values.new_zeros((*values.shape[:2], layout.places))
    for phase, shift in layout.taps:
        grid[..., :width] += phases[phase, :, :, shift : shift + width]
    return crop(grid, layout)


def spread_over_taps(values: torch.Tensor, layout: TapLayout) -> torch.Tensor:
    """The adjoint of :func:`tap_sums`: each output's ``values`` (b, G, *out) added to every tap of its field.

    Returns (b, G, *slab), zero where no field reads.
    """
    width = layout.columns
    grid = values.new_zeros((*values.shape[:2], layout.places))
    crop(grid, layout).copy_(values)
    spread = values.new_zeros((layout.phases, *values.shape[:2], layout.places))
    for phase, shift in layout.taps:
        spread[phase, :, :, shift : shift + width] += grid[..., :width]
    return merge_phases(spread, layout)


def tap_products(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: Geometry,
    groups: int,
    chunks: tuple[Chunk, ...],
) -> torch.Tensor:
    """The standard convolution's forward as one product per kernel tap and sample; no autograd.

    The input is unpadded, or padded already in a non-zero mode (then ``geometry`` has no
    padding); ``chunks`` as planned for ``geometry``.
    """
    out_channels = weight.shape[0]
    filters = tap_filters(weight, groups)
    in_group, out_group = weight.shape[1], out_channels // groups
    output = input.new_empty((input.shape[0], out_channels, *geometry.output_size))
    for chunk in chunks:
        layout = TapLayout(chunk.geometry)
        phases = split_phases(chunk_image(input, geometry, chunk), layout)
        samples, width = phases.shape[1], layout.columns
        grid = input.new_empty((samples, out_channels, layout.places))
        for sample, group in itertools.product(range(samples), range(groups)):
            result = grid[sample, group * out_group : (group + 1) * out_group, :width]
            channels = slice(group * in_group, (group + 1) * in_group)
            for tap, (phase, shift) in enumerate(layout.taps):
                columns = phases[phase, sample, channels, shift : shift + width]
                result.addmm_(filters[tap, group], columns, beta=0 if tap == 0 else 1)
        per_channel = None if bias is None else bias.view(-1, *(1,) * layout.geometry.ndim)
        copy_with_bias(output[(chunk.samples, slice(None), *chunk.region)], crop(grid, layout), per_channel)
    return output


def add_tap_products(
    phases: torch.Tensor | None,
    grid: torch.Tensor,
    taps: torch.Tensor,
    layout: TapLayout,
    grad_taps: torch.Tensor | None,
    grad_phases: torch.Tensor | None,
) -> None:
    """The two sums of a backward on the views, for one chunk, accumulated in place.

    ``grid`` (b, O, places) holds a scale per (output position, filter), zero off the outputs.
    ``grad_taps`` (K, G, Og, Cg) gets ``grid @ columns_t^T`` (a sum over fields of scale times
    field, tap by tap; needs ``phases``, the chunk's phase-split input) and ``grad_phases``
    (phases, b, C, places) gets ``filters_t^T @ grid`` in each tap's columns.
    """
    groups, out_group, in_group = taps.shape[1:]
    width, samples = layout.columns, grid.shape[0]
    # one batched product per tap and group over the chunk's samples: fewer calls than a product
    # per sample, the same sums in the same order (docs/engine.md has the measurement)
    for group in range(groups):
        scale = grid[:, group * out_group : (group + 1) * out_group, :width]
        channels = slice(group * in_group, (group + 1) * in_group)
        for tap, (phase, shift) in enumerate(layout.taps):
            if grad_taps is not None:
                assert phases is not None, "the weight gradient reads the phase-split input"
                columns = phases[phase, :, channels, shift : shift + width]
                grad_taps[tap, group].addbmm_(scale, columns.transpose(1, 2))
            if grad_phases is not None:
                grad_columns = grad_phases[phase, :, channels, shift : shift + width]
                grad_columns.baddbmm_(taps[tap, group].T.expand(samples, -1, -1), scale)


#: fewest input channels per group for which the shifted views beat copied fields (depthwise,
#: each product is 1 x 1; docs/engine.md has the measurements behind these thresholds)
MIN_CHANNELS_PER_GROUP = 4
#: fewest output positions per sample for which they do: each chunk costs a Python loop of
#: taps x groups products, so small images lose
MIN_POSITIONS = 1024
#: images from this many positions (16 x 16) take the views too when their groups are this wide
MIN_POSITIONS_WIDE, WIDE_CHANNELS = 256, 32


def shifted_views_fit(geometry: Geometry, weight: torch.Tensor) -> bool:
    """Whether a backward on shifted views beats copying the fields and folding their gradients.

    At stride 2 the phase split and the smaller products made it no faster, so it is kept for
    stride 1. Where oneDNN's inner product takes the copied fields' products (float32), those
    ran faster than the views' per-tap products, which accumulate in place through the BLAS
    (docs/benchmarks.md).

    >>> from anyconv.geometry import make_geometry
    >>> double = {"dtype": torch.float64}
    >>> shifted_views_fit(make_geometry((32, 32), 3, padding=1), torch.empty(4, 8, 3, 3, **double))
    True
    >>> shifted_views_fit(make_geometry((16, 16), 3, padding=1), torch.empty(4, 8, 3, 3, **double))
    False
    >>> shifted_views_fit(make_geometry((16, 16), 3, padding=1), torch.empty(4, 32, 3, 3, **double))
    True
    >>> shifted_views_fit(make_geometry((8, 8), 3, stride=2), torch.empty(4, 8, 3, 3, **double))
    False
    """
    channels, positions = weight.shape[1], geometry.num_positions
    large_enough = positions >= MIN_POSITIONS or (
        positions >= MIN_POSITIONS_WIDE and channels >= WIDE_CHANNELS
    )
    # complex weights take the fields path, whose backward conjugates as torch's does
    return (
        all(step == 1 for step in geometry.stride)
        and channels >= MIN_CHANNELS_PER_GROUP
        and large_enough
        and not weight.is_complex()
        and not inner_product_takes(weight.dtype)
    )
