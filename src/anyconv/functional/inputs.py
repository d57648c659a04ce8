"""The input as the functions read it: checked for type and rank, batched, padded in its mode."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ArgumentError, wrong_type
from ..geometry import Geometry, infer_ndim
from .pad import pad


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


def is_unbatched(argument: str, input: torch.Tensor, ndim: int) -> bool:
    """Whether ``input`` is (channels, *spatial) rather than (batch, channels, *spatial), for
    ``ndim`` spatial dimensions; any other rank is refused, naming ``argument``.

    >>> is_unbatched("input", torch.ones(3, 5, 5), 2)
    True
    """
    if input.dim() in (ndim + 1, ndim + 2):
        return input.dim() == ndim + 1
    raise ArgumentError(
        f"{argument} of shape {tuple(input.shape)} is invalid: expected {ndim + 2} dimensions "
        f"(batch, channels, *{ndim} spatial) or {ndim + 1} (channels, *{ndim} spatial)"
    )


def prepare_input(input: torch.Tensor, unbatched: bool, padding: Geometry | None) -> torch.Tensor:
    """``input`` with a batch dimension (added when ``unbatched``), padded as ``padding`` says.

    The one preparation of every function's input (``patches``, ``unfold``, and the engine's,
    which leaves zero padding to its chunks and passes None then).

    >>> from anyconv.geometry import make_geometry
    >>> circular = make_geometry((3,), 3, padding=1, padding_mode="circular")
    >>> prepare_input(torch.ones(2, 3), True, circular).shape
    torch.Size([1, 2, 5])
    """
    batched = input.unsqueeze(0) if unbatched else input
    return batched if padding is None else pad(batched, padding)
