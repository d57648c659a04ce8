"""col2im for any N: sum columns of receptive fields back into an image, the adjoint of unfold."""

from __future__ import annotations

from types import EllipsisType
from typing import Any

import torch

from ..errors import ArgumentError
from ..geometry import Geometry, infer_ndim, make_geometry, spatial_tuple
from ..geometry.limits import culprit
from .allocation import check_fits
from .im2col import image_of
from .inputs import check_tensor


def fold(
    input: torch.Tensor,
    output_size: Any,
    kernel_size: Any,
    dilation: Any = 1,
    padding: Any = 0,
    stride: Any = 1,
) -> torch.Tensor:
    """Sum columns (B, C * prod(kernel_size), L) into an image (B, C, *output_size).

    Acts like ``torch.nn.functional.fold`` for two spatial dimensions, for any N (the length of
    any tuple argument; 2 when all are ints, as in ``F.fold``). Overlapping fields add up, so
    ``fold(unfold(x))`` is ``x`` times how many fields cover each element. Indexing is by integer
    slices: exact for any size, and for integer dtypes. Its backward is :func:`unfold`.

    >>> import torch
    >>> ones = torch.ones(1, 9, 16)
    >>> fold(ones, (4, 4), 3, padding=1)[0, 0]
    tensor([[4., 6., 6., 4.],
            [6., 9., 9., 6.],
            [6., 9., 9., 6.],
            [4., 6., 6., 4.]])
    """
    check_tensor("input", input)
    geometry = fold_geometry(output_size, kernel_size, dilation, padding, stride)
    size = geometry.input_size
    if input.dim() not in (2, 3):
        raise ArgumentError(
            f"input of shape {tuple(input.shape)} is invalid: expected 3 dimensions "
            "(batch, channels * prod(kernel_size), blocks) or 2 (unbatched)"
        )
    batched = input if input.dim() == 3 else input.unsqueeze(0)
    rows, blocks = batched.shape[1:]
    if rows % geometry.kernel_volume or blocks != geometry.num_positions:
        raise ArgumentError(
            f"input of shape {tuple(input.shape)} is invalid for output_size={size}, "
            f"kernel_size={geometry.kernel_size}: expected a multiple of {geometry.kernel_volume} rows "
            f"and {geometry.num_positions} blocks (output positions {geometry.output_size})"
        )
    image_shape = (batched.shape[0], rows // geometry.kernel_volume, *geometry.padded_size)
    blame = culprit(geometry, padding, ("output_size", output_size))
    check_fits("the padded image", image_shape, batched, blame)
    image = image_of(batched, geometry)
    crop: tuple[EllipsisType | slice, ...] = (
        ...,
        *(slice(before, before + length) for length, (before, _) in zip(size, geometry.padding)),
    )
    # contiguous like F.fold's result, so that callers may .view() it as they would torch's
    image = image[crop].contiguous()
    return image if input.dim() == 3 else image.squeeze(0)


def fold_geometry(
    output_size: Any, kernel_size: Any, dilation: Any = 1, padding: Any = 0, stride: Any = 1
) -> Geometry:
    """The Geometry of a fold, its N read from the arguments alone (2 when all are ints, as ``F.fold``).

    >>> fold_geometry((5,), 3, padding=1).num_positions
    5
    """
    arguments = dict(
        output_size=output_size, kernel_size=kernel_size, dilation=dilation, padding=padding, stride=stride
    )
    ndim = infer_ndim(**arguments) or (1 if any(_is_one_tuple(value) for value in arguments.values()) else 2)
    size = spatial_tuple("output_size", output_size, ndim, 1)
    return make_geometry(size, kernel_size, stride, padding, dilation)


def _is_one_tuple(value: Any) -> bool:
    # (5,) names one spatial dimension, as it does for unfold; a bare int keeps F.fold's 2-D default
    return isinstance(value, (tuple, list)) and len(value) == 1
