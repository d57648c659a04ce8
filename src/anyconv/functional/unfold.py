"""im2col for any N: the receptive fields as columns, in the layout of ``F.unfold``."""

from __future__ import annotations

from typing import Any

import torch

from ..geometry import make_geometry
from ..geometry.limits import culprit
from .allocation import check_fits, check_padded_fits
from .im2col import columns_of
from .inputs import check_tensor, is_unbatched, prepare_input, spatial_ndim


def unfold(
    input: torch.Tensor,
    kernel_size: Any,
    dilation: Any = 1,
    padding: Any = 0,
    stride: Any = 1,
    *,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Extract the receptive fields of an N-d input as columns (B, C * prod(kernel_size), L).

    Acts like ``torch.nn.functional.unfold`` for a 4-D input, for any number of spatial
    dimensions N (the length of any tuple argument, else ``input.dim() - 2``), with per-side
    padding, 'same'/'valid', and the padding modes of ``nn.Conv2d``. Its backward is :func:`fold`.

    >>> import torch
    >>> x = torch.randn(2, 3, 5, 6, 7)
    >>> unfold(x, 3, padding=1).shape
    torch.Size([2, 81, 210])
    >>> torch.equal(unfold(x[..., 0], (2, 3)), torch.nn.functional.unfold(x[..., 0], (2, 3)))
    True
    """
    check_tensor("input", input)
    ndim = spatial_ndim(input, kernel_size=kernel_size, dilation=dilation, padding=padding, stride=stride)
    unbatched = is_unbatched("input", input, ndim)
    geometry = make_geometry(input.shape[-ndim:], kernel_size, stride, padding, dilation, padding_mode)
    batch, channels = (1, *input.shape[:1]) if unbatched else input.shape[:2]
    columns_shape = (batch, channels * geometry.kernel_volume, geometry.num_positions)
    blame = culprit(geometry, padding, ("kernel_size", kernel_size))
    check_fits("the columns", columns_shape, input, blame)
    check_padded_fits(input, geometry, padding)
    columns = columns_of(prepare_input(input, unbatched, geometry), geometry)
    return columns.squeeze(0) if unbatched else columns
