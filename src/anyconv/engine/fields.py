"""Fields of one chunk in the engine's layout, and their gradient folded back (col2im).

Each chunk pads its slab of the input into a small channels-last buffer (b, *slab, C), and its
fields are copied out of that as (G, M, Kg) rows, each row one receptive field with its taps in
the order (*kernel, channel): the copy reads whole channel vectors, and the matrix product that
follows reads rows, the fastest layout for both (measured here: the product about 1.6x faster
than on im2col's (K, L) layout, the copy about 2x).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..functional.allocation import check_fits, check_padded_fits
from ..functional.im2col import field_view
from ..geometry import Geometry
from ..geometry.limits import culprit
from .chunks import Chunk
from .fields_fold import fold_fields


def check_conv_sizes(
    input: torch.Tensor, weight: torch.Tensor, geometry: Geometry, padding: Any, dilation: Any
) -> None:
    """Refuse a convolution of ``input`` (B, C, *spatial) whose output or smallest chunk cannot be made.

    The smallest chunk reads the padded slab of one field of one sample: (1, C, *field_span).
    """
    output = (input.shape[0], weight.shape[0], *geometry.output_size)
    check_fits("the output", output, input, culprit(geometry, padding, ("weight", weight)))
    if geometry.padding_mode != "zeros":
        check_padded_fits(input, geometry, padding)
    spread = ("dilation", dilation) if any(step > 1 for step in geometry.dilation) else ("padding", padding)
    check_fits("the padded input one output reads", (1, input.shape[1], *geometry.field_span), input, spread)


#: channel strides (bytes) at which a direct transposing copy is slow: channels this far apart
#: share a few cache sets, which a copy reading one element of each channel in turn thrashes
ALIASED_CHANNEL_STRIDE = 2048


def chunk_slab(input: torch.Tensor, geometry: Geometry, chunk: Chunk) -> torch.Tensor:
    """The zero-padded input that ``chunk`` reads, channels last: (b, *slab, C), any strides.

    Padding per chunk keeps the copy small enough to stay in cache and spares a padded copy
    of the whole input. A channels-last input is used as it is: a view of it when the chunk
    needs no padding, else copied into a zeroed slab, with no channels-first copy. A
    channels-first input is transposed into the slab in the same copy, unless its channels lie
    a multiple of ``ALIASED_CHANNEL_STRIDE`` bytes apart (a 32 x 32 float plane is 4 KiB): then
    the padded image is made channels first and transposed after, which measured 3x faster on
    (32, 64, 32, 32) (1.1 ms against 2.9 ms).
    """
    channels_last = input.stride(1) == 1
    if not channels_last and (input.stride(1) * input.element_size()) % ALIASED_CHANNEL_STRIDE == 0:
        return chunk_image(input, geometry, chunk).movedim(1, -1).contiguous()
    source, target = _interior(geometry, chunk)
    block = input[(chunk.samples, slice(None), *source)].movedim(1, -1)
    slab_size = chunk.geometry.input_size
    if tuple(block.shape[1:-1]) == slab_size:
        # no padding in this chunk
        return block if channels_last else block.contiguous()
    slab = input.new_zeros((block.shape[0], *slab_size, input.shape[1]))
    slab[(slice(None), *target)] = block
    return slab


def chunk_image(input: torch.Tensor, geometry: Geometry, chunk: Chunk) -> torch.Tensor:
    """The zero-padded input that ``chunk`` reads, channels first: (b, C, *slab)."""
    samples, channels = chunk.samples.stop - chunk.samples.start, input.shape[1]
    source, target = _interior(geometry, chunk)
    block = input[(chunk.samples, slice(None), *source)]
    if not geometry.is_padded:
        return block.contiguous()
    image = input.new_zeros((samples, channels, *chunk.geometry.input_size))
    image[(slice(None), slice(None), *target)] = block
    return image


def _interior(geometry: Geometry, chunk: Chunk) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Where the input overlaps the chunk's padded slab: (input slices, slab slices) per dim."""
    source, target = [], []
    for size, (before, _), slab in zip(geometry.input_size, geometry.padding, chunk.slab):
        start, stop = slab.start, slab.stop
        first, last = max(start - before, 0), min(stop - before, size)
        source.append(slice(first, max(first, last)))
        target.append(slice(first + before - start, max(first, last) + before - start))
    return tuple(source), tuple(target)


def fields_buffer(input: torch.Tensor, chunks: tuple[Chunk, ...]) -> torch.Tensor:
    """One flat buffer large enough for the fields of any of ``chunks``, to reuse across them.

    Reusing it spares an allocation (and its page faults) per chunk and keeps it warm in cache.
    """
    largest = max([0, *(chunk.num_fields * chunk.geometry.kernel_volume for chunk in chunks)])
    return input.new_empty(largest * input.shape[1])


def chunk_fields(
    input: torch.Tensor, geometry: Geometry, chunk: Chunk, groups: int, buffer: torch.Tensor | None = None
) -> torch.Tensor:
    """Copy the receptive fields of ``chunk`` out of the (B, C, *spatial) input as (G, M, Kg).

    With ``buffer`` (from :func:`fields_buffer`) the fields are written into it, and they are
    valid until the next chunk is written there.
    """
    fields_geometry = chunk.geometry
    ndim = geometry.ndim
    slab = _one_tap_positions(input, geometry, chunk)
    if slab is not None:
        # a one-tap field is the input's channel vector at its position: one copy straight out
        # of the input, without the slab of every position the stride skips
        view = slab.unflatten(1, (groups, -1))[(..., *(None,) * ndim)]
    else:
        slab = chunk_slab(input, geometry, chunk).movedim(-1, 1)
        view = field_view(slab, fields_geometry).unflatten(1, (groups, -1))
    samples, channels = slab.shape[:2]
    # (b, G, Cg, *out, *kernel) -> (G, b, *out, *kernel, Cg)
    order = (1, 0, *range(3, 3 + 2 * ndim), 2)
    shape = (groups, samples, *fields_geometry.output_size, *fields_geometry.kernel_size, channels // groups)
    if buffer is None:
        fields = input.new_empty(shape)
    else:
        fields = buffer[: math.prod(shape)].view(shape)
    fields.copy_(view.permute(order))
    return fields.view(groups, samples * fields_geometry.num_positions, -1)


def add_field_grads(
    grad_input: torch.Tensor, grad_fields: torch.Tensor, geometry: Geometry, chunk: Chunk
) -> None:
    """Fold the gradient of the fields (G, M, Kg) of ``chunk`` into the (B, C, *spatial) gradient."""
    fields_geometry = chunk.geometry
    ndim = geometry.ndim
    groups = grad_fields.shape[0]
    samples = chunk.samples.stop - chunk.samples.start
    target = _one_tap_positions(grad_input, geometry, chunk)
    if target is not None:
        # the adjoint of chunk_fields' one-tap copy: each field's gradient goes to its one position
        # (G, b, *out, Cg) -> (b, G, Cg, *out), the target's (b, C, *out) with C split in groups
        grads = grad_fields.reshape(groups, samples, *fields_geometry.output_size, -1)
        target.unflatten(1, (groups, -1)).add_(grads.permute(1, 0, 2 + ndim, *range(2, 2 + ndim)))
        return
    slab = fold_fields(grad_fields, fields_geometry, samples)
    add_image_grad(grad_input, slab.movedim(-1, 1), geometry, chunk)


def _one_tap_positions(tensor: torch.Tensor, geometry: Geometry, chunk: Chunk) -> torch.Tensor | None:
    """The (b, C, *out) view of ``tensor`` (B, C, *spatial) at the positions ``chunk``'s one-tap
    fields read, or None when the fields are not single input positions (a larger kernel, or
    zero padding still to apply)."""
    if geometry.kernel_volume != 1 or geometry.is_padded:
        return None
    kept = [slice(part.start, part.stop, step) for part, step in zip(chunk.slab, geometry.stride)]
    return tensor[(chunk.samples, slice(None), *kept)]


def add_image_grad(grad_input: torch.Tensor, image: torch.Tensor, geometry: Geometry, chunk: Chunk) -> None:
    """Add the gradient of ``chunk``'s padded input (b, C, *slab), any strides, into ``grad_input``.

    The adjoint of :func:`chunk_image` (and of :func:`chunk_slab`): the padding is cropped away.
    """
    source, target = _interior(geometry, chunk)
    grad_input[(chunk.samples, slice(None), *source)] += image[(slice(None), slice(None), *target)]


def filters_of(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The weight (O, Cg, *kernel) as filters (G, Og, Kg) with taps in the fields' order."""
    return weight.movedim(1, -1).reshape(groups, weight.shape[0] // groups, -1)


def weight_of(filters: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Filters (G, Og, Kg) back in the layout of ``weight`` (O, Cg, *kernel): the inverse of filters_of."""
    channels_last_shape = (weight.shape[0], *weight.shape[2:], weight.shape[1])
    return filters.reshape(channels_last_shape).movedim(-1, 1)
