"""Padding of any number of spatial dimensions in torch's four modes.

``F.pad`` handles zeros for any rank but reflect, replicate and circular only up to three
spatial dimensions, so the non-zero modes are written once here as an index gather per
dimension: the same numbers as ``F.pad`` where it applies, any N where it does not, and an
autograd backward (``index_select``'s, a scatter-add) for free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..geometry import Geometry


def pad(input: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Pad the spatial dimensions (the last N) of ``input`` as ``geometry`` says.

    >>> import torch
    >>> from anyconv.geometry import make_geometry
    >>> g = make_geometry((3,), kernel_size=3, padding=((1, 2),), padding_mode="circular")
    >>> pad(torch.tensor([[[1, 2, 3]]]), g)
    tensor([[[3, 1, 2, 3, 1, 2]]])
    """
    if not geometry.is_padded:
        return input
    if geometry.padding_mode == "zeros":
        return F.pad(input, geometry.torch_pad)
    first_spatial = input.dim() - geometry.ndim
    for axis, (size, (before, after)) in enumerate(zip(geometry.input_size, geometry.padding)):
        if before or after:
            index = source_index(size, before, after, geometry.padding_mode, input.device)
            input = input.index_select(first_spatial + axis, index)
    return input


def source_index(size: int, before: int, after: int, mode: str, device: torch.device) -> torch.Tensor:
    """For each padded position along one dimension, the input position it copies.

    >>> source_index(4, 2, 2, "reflect", torch.device("cpu")).tolist()
    [2, 1, 0, 1, 2, 3, 2, 1]
    """
    positions = torch.arange(-before, size + after, device=device)
    if mode == "replicate":
        return positions.clamp(0, size - 1)
    if mode == "circular":
        return positions.remainder(size)
    # reflect: mirror about the first and last element, which are not repeated
    period = 2 * (size - 1)
    if period == 0:
        return positions.zero_()
    folded = positions.remainder(period)
    return torch.where(folded < size, folded, period - folded)
