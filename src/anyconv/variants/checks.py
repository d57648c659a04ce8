"""Checks of a variant against the tensors it will meet: per-channel option lengths and dtypes.

Run at module construction and at each call, before any allocation, so that a mistake is named
(option, length, out_channels; dtype and what the variant supports) rather than met deep inside.
"""

from __future__ import annotations

import torch

from ..errors import ArgumentError, ArgumentTypeError
from .base import Variant


def check_per_channel_options(variant: Variant, out_channels: int) -> None:
    """Every 1-D tensor option of ``variant`` must hold one value per output channel.

    >>> from anyconv.variants import RBF
    >>> check_per_channel_options(RBF(gamma=torch.ones(5)), 6)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    anyconv.errors.ArgumentError: gamma=<Tensor of shape (5,)> holds 5 values: ... out_channels=6 ...
    """
    for option, value in variant.options.items():
        if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() != out_channels:
            raise ArgumentError(
                f"{option}=<Tensor of shape {tuple(value.shape)}> holds {value.numel()} values: expected "
                f"one value per output channel, out_channels={out_channels} (or a single number) "
                f"for {variant.name!r}"
            )


def dtype_kind(dtype: torch.dtype) -> str:
    """``"floating"``, ``"complex"``, ``"integer"`` or ``"bool"``: what ``Variant.dtype_kinds`` lists.

    >>> dtype_kind(torch.bfloat16), dtype_kind(torch.uint8)
    ('floating', 'integer')
    """
    if dtype.is_floating_point:
        return "floating"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "integer"


def check_dtype(variant: Variant, argument: str, tensor: torch.Tensor) -> None:
    """``tensor``'s dtype must be of a kind ``variant`` lists in its ``dtype_kinds``.

    >>> from anyconv.variants import L2
    >>> check_dtype(L2(), "input", torch.ones(2, dtype=torch.int64))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    anyconv.errors.ArgumentTypeError: input of dtype torch.int64 is invalid for variant 'l2': it supports ...
    """
    if dtype_kind(tensor.dtype) not in variant.dtype_kinds:
        kinds = ", ".join(variant.dtype_kinds)
        raise ArgumentTypeError(
            f"{argument} of dtype {tensor.dtype} is invalid for variant {variant.name!r}: "
            f"it supports {kinds} dtypes only"
        )


def check_call(variant: Variant, input: torch.Tensor, weight: torch.Tensor) -> None:
    """The checks of a call: input and weight dtypes, per-channel options against ``weight``."""
    check_dtype(variant, "input", input)
    check_dtype(variant, "weight", weight)
    check_per_channel_options(variant, weight.shape[0])
