"""Checks shared by the functional layer: tensor type, rank, and the optional batch dimension."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ArgumentError, wrong_type
from ..geometry import infer_ndim


def check_tensor(argument: str, value: Any) -> torch.Tensor:
    """Return ``value`` if it is a tensor, else raise a TypeError naming ``argument``."""
    if not isinstance(value, torch.Tensor):
        raise wrong_type(argument, value, "a torch.Tensor")
    return value


def spatial_ndim(input: torch.Tensor, **arguments: Any) -> int:
    """N for a receptive-field call: from the first tuple argument, else ``input.dim() - 2``.

    An int kernel_size (with int stride, padding, dilation) means a batched input, as in
    ``F.unfold``; pass a tuple to use an unbatched input with an int-free call.
    """
    ndim = infer_ndim(**arguments)
    if ndim is None:
        for value in arguments.values():
            if isinstance(value, (tuple, list)) and len(value) == 1:
                return 1
        ndim = input.dim() - 2
    if ndim < 1:
        raise ArgumentError(
            f"input of shape {tuple(input.shape)} is invalid: expected (batch, channels, *spatial) "
            "with at least one spatial dimension"
        )
    return ndim


def add_batch_dim(argument: str, input: torch.Tensor, ndim: int) -> tuple[torch.Tensor, bool]:
    """Return ``input`` with a batch dimension, and whether one was added (unbatched input).

    Accepts (batch, channels, *spatial) or (channels, *spatial) with ``ndim`` spatial dimensions.
    """
    if input.dim() == ndim + 2:
        return input, False
    if input.dim() == ndim + 1:
        return input.unsqueeze(0), True
    raise ArgumentError(
        f"{argument} of shape {tuple(input.shape)} is invalid: expected {ndim + 2} dimensions "
        f"(batch, channels, *{ndim} spatial) or {ndim + 1} (channels, *{ndim} spatial)"
    )
