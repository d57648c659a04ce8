"""Checks of a convolution's tensors (input, weight, bias, groups) before any work is done.

torch's own wording is kept where torch has one, so a user who knows nn.Conv2d's errors knows ours.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ArgumentError, ArgumentTypeError, invalid, wrong_type
from ..geometry.arguments import as_int


def check_conv_tensors(
    input: Any, weight: Any, bias: Any, groups: Any, *, transposed: bool = False
) -> tuple[int, int]:
    """Validate the tensors of a convolution; return (N spatial dims, groups as an int).

    ``weight`` is (out, in // groups, *kernel), or (in, out // groups, *kernel) when transposed.
    """
    if not isinstance(input, torch.Tensor):
        raise wrong_type("input", input, "a torch.Tensor")
    if not isinstance(weight, torch.Tensor):
        raise wrong_type("weight", weight, "a torch.Tensor")
    groups = as_int("groups", groups)
    if groups < 1:
        raise invalid("groups", groups, "a positive integer")
    ndim = weight.dim() - 2
    if ndim < 1:
        raise ArgumentError(
            f"weight of shape {tuple(weight.shape)} is invalid: expected "
            "(out_channels, in_channels // groups, *kernel_size) with at least one spatial dimension"
        )
    if 0 in weight.shape:
        # torch refuses zero output channels; an empty sum over zero input channels or taps is as
        # surely a bug, and would give zeros without a word
        raise ArgumentError(
            f"weight of shape {tuple(weight.shape)} is invalid: expected every size positive "
            "(channels and kernel_size)"
        )
    if input.dim() not in (ndim + 1, ndim + 2):
        raise ArgumentError(
            f"input of shape {tuple(input.shape)} is invalid for a weight of shape {tuple(weight.shape)}: "
            f"expected {ndim + 2}-D (batch, channels, *{ndim} spatial) or {ndim + 1}-D unbatched input"
        )
    channels = input.shape[-ndim - 1]
    if transposed:
        if weight.shape[0] != channels:
            raise ArgumentError(
                f"input of shape {tuple(input.shape)} has {channels} channels, but weight of shape "
                f"{tuple(weight.shape)} expects {weight.shape[0]} "
                "(weight is (in_channels, out_channels // groups, *kernel))"
            )
        if channels % groups:
            raise invalid("groups", groups, f"a divisor of in_channels={channels}")
        out_channels = weight.shape[1] * groups
    else:
        if weight.shape[0] % groups:
            raise invalid("groups", groups, f"a divisor of out_channels={weight.shape[0]}")
        if channels != weight.shape[1] * groups:
            raise ArgumentError(
                f"input of shape {tuple(input.shape)} has {channels} channels, but weight of shape "
                f"{tuple(weight.shape)} with groups={groups} expects {weight.shape[1] * groups} "
                "(in_channels must be weight.shape[1] * groups)"
            )
        out_channels = weight.shape[0]
    if input.dtype == torch.bool:
        raise ArgumentTypeError(
            "input has dtype torch.bool: expected a dtype that multiplies and adds "
            "(a floating, complex or integer dtype)"
        )
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise wrong_type(name, tensor, "a torch.Tensor or None")
        if tensor.dtype != input.dtype:
            raise ArgumentTypeError(
                f"{name} has dtype {tensor.dtype} but input has dtype {input.dtype}: expected the same dtype"
            )
        if tensor.device != input.device:
            raise ArgumentError(
                f"{name} is on device {tensor.device} but input is on {input.device}: "
                "expected the same device"
            )
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ArgumentError(
            f"bias of shape {tuple(bias.shape)} is invalid: "
            f"expected ({out_channels},), one per output channel"
        )
    return ndim, groups
