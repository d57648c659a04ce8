"""The receptive fields as a zero-copy view: (B, C, *out, *kernel) over the padded input."""

from __future__ import annotations

from typing import Any

import torch

from ..geometry import make_geometry
from .allocation import check_padded_fits
from .im2col import field_view
from .inputs import check_tensor, is_unbatched, prepare_input, spatial_ndim


def patches(
    input: torch.Tensor,
    kernel_size: Any,
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Every receptive field of ``input``, as a strided view shaped (B, C, *out, *kernel).

    No copy is made beyond the padded input (none at all without padding). N is the length of
    any tuple argument, else ``input.dim() - 2``; (C, *spatial) input gives (C, *out, *kernel).

    >>> import torch
    >>> x = torch.arange(16.).reshape(1, 1, 4, 4)
    >>> view = patches(x, 3, stride=1)
    >>> view.shape
    torch.Size([1, 1, 2, 2, 3, 3])
    >>> view.data_ptr() == x.data_ptr()
    True
    >>> view[0, 0, 1, 1]
    tensor([[ 5.,  6.,  7.],
            [ 9., 10., 11.],
            [13., 14., 15.]])
    """
    check_tensor("input", input)
    ndim = spatial_ndim(input, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation)
    unbatched = is_unbatched("input", input, ndim)
    geometry = make_geometry(input.shape[-ndim:], kernel_size, stride, padding, dilation, padding_mode)
    check_padded_fits(input, geometry, padding)
    view = field_view(prepare_input(input, unbatched, geometry), geometry)
    return view.squeeze(0) if unbatched else view
