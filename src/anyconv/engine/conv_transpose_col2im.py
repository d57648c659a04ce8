"""The col2im form of ``conv_transpose``: weights times input per group, summed back with col2im.

Each input position spreads its channel vector, multiplied by the weights, over the receptive
field it would have read in the matching convolution; col2im adds those fields into the output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..functional.im2col import Col2Im
from ..geometry import Geometry, make_geometry


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
    return make_geometry(full_size, kernel_size, stride, 0, dilation)


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
    differentiable through autograd (col2im's backward is im2col); the result may be a view of a
    larger tensor. The crop and the zeros are plain integers and the chunks a split, so a trace
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
    # cropping the padding is a view; the copy that follows (cat, bias or layout) makes it whole
    crop = tuple(
        slice(pad, full - pad + more - extra)
        for pad, more, extra, full in zip(padding, output_padding, beyond, geometry.padded_size)
    )
    chunks = [batched] if samples_per_chunk >= batch else batched.split(samples_per_chunk)
    parts = []
    for chunk in chunks:
        values = chunk.reshape(chunk.shape[0], groups, channels // groups, geometry.num_positions)
        columns = torch.matmul(matrices, values).flatten(1, 2)
        parts.append(Col2Im.apply(columns, geometry)[(slice(None), slice(None), *crop)])
    output = parts[0] if len(parts) == 1 else torch.cat(parts)
    if any(beyond):
        output = F.pad(output, tuple(amount for more in reversed(beyond) for amount in (0, more)))
    return output
