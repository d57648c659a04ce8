"""Checks of variant option values: each raises anyconv's clear error naming option and value.

A value is a number, or for per-channel options a 1-D tensor whose every entry must pass.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from ..errors import invalid, wrong_type


def _entries(option: str, value: Any, variant: str) -> list[float]:
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise wrong_type(option, value, f"a floating-point tensor for option {option!r} of {variant!r}")
        if value.device.type == "meta":
            # a model built on the meta device (its values loaded later): no values to check yet
            return []
        return [float(entry) for entry in value.detach().reshape(-1).tolist()]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise wrong_type(option, value, f"a number for option {option!r} of {variant!r}")
    return [float(value)]


def check_positive(option: str, value: Any, variant: str) -> None:
    """``value`` (every entry of a tensor) must be a finite number > 0.

    >>> check_positive("gamma", 0.0, "rbf")
    Traceback (most recent call last):
    ...
    anyconv.errors.ArgumentError: gamma=0.0 is invalid: expected a finite number > 0 for 'rbf'
    """
    for entry in _entries(option, value, variant):
        if not (entry > 0 and entry < float("inf")):
            raise invalid(
                option,
                value if not isinstance(value, torch.Tensor) else entry,
                f"a finite number > 0 for {variant!r}",
            )


def check_finite(option: str, value: Any, variant: str) -> None:
    """``value`` (every entry of a tensor) must be a finite number."""
    for entry in _entries(option, value, variant):
        if not abs(entry) < float("inf"):
            raise invalid(
                option,
                value if not isinstance(value, torch.Tensor) else entry,
                f"a finite number for {variant!r}",
            )


def check_positive_integer(option: str, value: Any, variant: str) -> None:
    """``value`` must be an int >= 1 (not a tensor: it shapes the formula)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise wrong_type(option, value, f"a positive int for option {option!r} of {variant!r}")
    if value < 1:
        raise invalid(option, value, f"a positive int for {variant!r}")


def check_flag(option: str, value: Any, variant: str) -> None:
    """``value`` must be True or False."""
    if not isinstance(value, bool):
        raise wrong_type(option, value, f"True or False for option {option!r} of {variant!r}")
