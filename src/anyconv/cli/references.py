"""Independent references for ``anyconv check``: torch's own functions where torch has them, and
short loops over kernel taps, written apart from anyconv's code, where it does not.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from ..geometry import Geometry

NATIVE_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def reference_pad(input: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Pad with F.pad: zeros in one call (any N), other modes one dimension at a time.

    Reflect, replicate and circular padding are separable, and F.pad does them for one spatial
    dimension, so moving each dimension last and padding it alone works for any N.
    """
    if geometry.padding_mode == "zeros":
        return F.pad(input, geometry.torch_pad)
    for axis, (before, after) in enumerate(geometry.padding, start=2):
        if before or after:
            moved = input.movedim(axis, -1)
            rows = F.pad(moved.reshape(-1, 1, moved.shape[-1]), (before, after), mode=geometry.padding_mode)
            input = rows.reshape(*moved.shape[:-1], rows.shape[-1]).movedim(-1, axis)
    return input


def reference_unfold(input: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The columns (B, C*K, L), one strided slice of the padded input per kernel tap."""
    padded = reference_pad(input, geometry)
    batch, channels = input.shape[:2]
    taps = []
    for tap in itertools.product(*(range(kernel) for kernel in geometry.kernel_size)):
        window = tuple(
            slice(offset * spacing, offset * spacing + step * (count - 1) + 1, step)
            for offset, spacing, step, count in zip(
                tap, geometry.dilation, geometry.stride, geometry.output_size
            )
        )
        taps.append(padded[(slice(None), slice(None), *window)].reshape(batch, channels, -1))
    return torch.stack(taps, dim=2).reshape(batch, channels * geometry.kernel_volume, -1)


def reference_fold(columns: torch.Tensor, geometry: Geometry, channels: int) -> torch.Tensor:
    """Fold as the adjoint of :func:`reference_unfold` (zero padding): the gradient of <unfold(x), y>."""
    image = columns.new_zeros((columns.shape[0], channels, *geometry.input_size), requires_grad=True)
    with torch.enable_grad():
        (folded,) = torch.autograd.grad(reference_unfold(image, geometry), image, columns, create_graph=True)
    return folded


def recipe_convolution(
    columns: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, geometry: Geometry, groups: int
) -> torch.Tensor:
    """Convolution from columns: per group, the filters as rows times the fields, plus the bias."""
    batch = columns.shape[0]
    out_channels = weight.shape[0]
    fields = columns.reshape(batch, groups, -1, columns.shape[-1])
    filters = weight.reshape(groups, out_channels // groups, -1)
    output = torch.einsum("gok,bgkl->bgol", filters, fields).reshape(
        batch, out_channels, *geometry.output_size
    )
    return output + bias.reshape(1, -1, *(1,) * geometry.ndim)


def reference_convolution(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, geometry: Geometry, groups: int
) -> tuple[torch.Tensor, str]:
    """The convolution by torch's F.convNd (N <= 3) on the reference padding, else by the loop recipe.

    Returns the output and the name of the reference used.
    """
    native = NATIVE_CONVOLUTIONS.get(geometry.ndim)
    if native is not None:
        padded = reference_pad(input, geometry)
        output = native(padded, weight, bias, geometry.stride, 0, geometry.dilation, groups)
        return output, f"F.conv{geometry.ndim}d"
    columns = reference_unfold(input, geometry)
    return recipe_convolution(columns, weight, bias, geometry, groups), "loop unfold + matmul"
