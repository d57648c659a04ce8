"""The col2im form of ``conv_transpose``: weights times input per group, summed back with col2im.

Each input position spreads its channel vector, multiplied by the weights, over the receptive
field it would have read in the matching convolution; col2im adds those fields into the output.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..functional.im2col import image_of
from ..geometry import Geometry, make_geometry
from ..geometry.arguments import is_traced
from ..variants.matrix_products import batched_product, filters_times_columns, inner_product_pays
from .blocks import copy_with_bias
from .fields_fold import fold_fields, fold_into, transposed_matrices
from .ops_memory_format import empty_like_input


def col2im_geometry(
    input_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Geometry:
    """The convolution whose fields are one per input position: of the output before its padding
    is cropped and output_padding's zeros (no field reaches them) are added.

    >>> col2im_geometry((5, 5), (3, 3), (2, 2), (1, 1)).padded_size
    (11, 11)
    """
    full_size = tuple(
        (size - 1) * step + spacing * (kernel - 1) + 1
        for size, step, spacing, kernel in zip(input_size, stride, dilation, kernel_size)
    )
    if is_traced((*input_size, *full_size)):
        return make_geometry(full_size, kernel_size, stride, 0, dilation)
    # plain sizes: the normalised geometry once per call's sizes, not the arguments checked again
    return _cached_geometry(full_size, kernel_size, stride, dilation)


@lru_cache(maxsize=256)
def _cached_geometry(
    size: tuple[int, ...], kernel_size: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
) -> Geometry:
    return make_geometry(size, kernel_size, stride, 0, dilation)


def col2im_sample_bytes(
    geometry: Geometry, out_channels: int, output_size: tuple[int, ...], element_size: int
) -> int:
    """The bytes the col2im form makes per sample beyond one output-sized tensor: its columns
    (out_channels x taps per input position), and its image where the cropped padding makes it larger.

    >>> col2im_sample_bytes(col2im_geometry((16, 16), (4, 4), (2, 2), (1, 1)), 64, (32, 32), 4)
    1082368
    """
    beyond = max(0, math.prod(geometry.padded_size) - math.prod(output_size))
    return element_size * out_channels * (geometry.kernel_volume * geometry.num_positions + beyond)


def image_crop(
    geometry: Geometry, padding: tuple[int, ...], output_padding: tuple[int, ...]
) -> tuple[slice, ...]:
    """The part of col2im's image (``geometry.padded_size``) the output keeps: ``padding`` cropped
    before, and after it what ``output_padding`` gives back, up to the image's end (output_padding
    past it is positions no field reaches).

    >>> image_crop(col2im_geometry((5,), (3,), (2,), (1,)), (1,), (1,))
    (slice(1, 11, None),)
    """
    return tuple(
        slice(pad, full - pad + min(more, pad))
        for pad, more, full in zip(padding, output_padding, geometry.padded_size)
    )


def col2im_transpose(
    batched: torch.Tensor,
    weight: torch.Tensor,
    groups: int,
    geometry: Geometry,
    padding: tuple[int, ...],
    output_padding: tuple[int, ...],
    samples_per_chunk: int,
) -> torch.Tensor:
    """The transposed convolution (no bias) of a batched input, ``samples_per_chunk`` samples at a
    time: per group, (out_channels * taps, in_channels) weights times the input, then col2im.

    ``geometry`` is :func:`col2im_geometry`'s; the output starts ``padding`` into its image, and
    ``output_padding`` past the image's end (where ``padding`` crops less) is zeros. Twice
    differentiable through autograd (col2im's backward is im2col); the result is a tensor of its
    own (no view). The crop and the zeros are plain integers and the chunks a split, so a trace
    with symbolic sizes (torch.compile, torch.export) keeps them symbolic; a trace passes the whole
    batch as ``samples_per_chunk`` (one chunk), a graph cannot loop a size-dependent number of times.

    >>> import torch, torch.nn.functional as F
    >>> x, w = torch.randn(3, 4, 5, 5, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    >>> geometry = col2im_geometry((5, 5), (3, 3), (2, 2), (1, 1))
    >>> y = col2im_transpose(x, w, 1, geometry, (1, 1), (1, 1), samples_per_chunk=2)
    >>> torch.allclose(y, F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1))
    True
    """
    batch, channels = batched.shape[:2]
    # (C, Og, *kernel) -> (G, Og * K, Cg): one matrix per group, rows in col2im's (channel, tap) order
    matrices = weight.reshape(groups, channels // groups, -1).transpose(1, 2)
    # output_padding's positions beyond the image, which no field reaches: what padding leaves of it
    beyond = tuple(max(0, more - pad) for pad, more in zip(padding, output_padding))

    def image(chunk: torch.Tensor) -> torch.Tensor:
        values = chunk.reshape(chunk.shape[0], groups, channels // groups, geometry.num_positions)
        return image_of(filters_times_columns(matrices, values).flatten(1, 2), geometry)

    if samples_per_chunk >= batch:
        # the crop and the zeros in one F.pad: one copy, and one node whose backward is one copy,
        # where a view cropped dimension by dimension has a backward per dimension, each a
        # zero-filled image and a copy
        amounts = tuple(
            amount
            for pad, more in zip(reversed(padding), reversed(output_padding))
            for amount in (-pad, more - pad)
        )
        whole = image(batched)
        return F.pad(whole, amounts) if any(amounts) else whole
    # cropping the padding is a view; the cat that follows makes it whole
    crop = image_crop(geometry, padding, output_padding)
    output = torch.cat(
        [image(chunk)[(slice(None), slice(None), *crop)] for chunk in batched.split(samples_per_chunk)]
    )
    if any(beyond):
        output = F.pad(output, tuple(amount for more in reversed(beyond) for amount in (0, more)))
    return output


def folded_transpose(
    batched: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
    geometry: Geometry,
    padding: tuple[int, ...],
    output_padding: tuple[int, ...],
    output_size: tuple[int, ...],
    samples_per_chunk: int,
) -> torch.Tensor:
    """The col2im form for tensors that need no gradient, in the fields path's layout.

    Per chunk of samples and group, the input's channel vectors (one row per input position)
    times the weights give each position's columns as a row ordered (tap, out channel): the
    layout of a field's gradient in the fields path's backward, which its fold
    (:func:`anyconv.engine.fields_fold.fold_fields`, native where it loads) sums into a
    channels-last image in one pass. The product reads a channels-first input as it is, through
    a transposed view, where a copy of its rows cost a pass over the input. Into a channels-first
    output the native fold (:func:`anyconv.engine.fields_fold.fold_into`) writes the image's crop
    and the bias itself; elsewhere the crop is copied into the output, in torch's memory format,
    with the bias in the same copy. Positions past the image (``output_padding`` that ``padding``
    does not crop) get the bias alone. No autograd.

    >>> import torch, torch.nn.functional as F
    >>> x, w = torch.randn(3, 4, 5, 5, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    >>> geometry = col2im_geometry((5, 5), (3, 3), (2, 2), (1, 1))
    >>> y = folded_transpose(x, w, None, 1, geometry, (1, 1), (1, 1), (10, 10), samples_per_chunk=2)
    >>> torch.allclose(y, F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1))
    True
    """
    batch, channels = batched.shape[:2]
    per_group, out_group, taps = channels // groups, weight.shape[1], geometry.kernel_volume
    # (C, Og, *kernel) -> (G, Cg, K * Og): a column per (tap, out channel), the fields' order
    matrices = transposed_matrices(weight.reshape(channels, out_group, taps)).reshape(groups, per_group, -1)
    output = empty_like_input(batched, weight, (batch, groups * out_group, *output_size))
    # the output positions the image covers once its padding is cropped; the rest (output_padding
    # past the image) no tap reaches
    kept = image_crop(geometry, padding, output_padding)
    inside = tuple(slice(0, part.stop - part.start) for part in kept)
    per_channel = None if bias is None else bias.view(-1, *(1,) * geometry.ndim)
    if any(part.stop < size for part, size in zip(inside, output_size)):
        if per_channel is None:
            output.zero_()
        else:
            output.copy_(per_channel.expand_as(output))
    for start in range(0, batch, samples_per_chunk):
        chunk = batched[start : start + samples_per_chunk]
        samples = chunk.shape[0]
        # (b, G, Cg, positions) viewed as (b, G, positions, Cg): a row per input position
        values = chunk.reshape(samples, groups, per_group, -1).transpose(2, 3)
        if inner_product_pays(values[0, 0], matrices[0].mT):
            # oneDNN's inner product on the rows copied out, (G, b * positions, Cg): a copy of the
            # input, where a product per sample would copy its larger result into the columns
            rows = values.transpose(0, 1).reshape(groups, -1, per_group)
            columns = batched_product(rows, matrices)
        else:
            columns = values.new_empty((groups, samples, values.shape[2], taps * out_group))
            for group in range(groups):
                torch.matmul(values[:, group], matrices[group], out=columns[group])
            columns = columns.flatten(1, 2)
        chunk_output = output[start : start + samples]
        if not fold_into(columns, geometry, chunk_output, padding, bias):
            image = fold_fields(columns, geometry, samples).movedim(-1, 1)
            target = chunk_output[(slice(None), slice(None), *inside)]
            copy_with_bias(target, image[(slice(None), slice(None), *kept)], per_channel)
    return output
