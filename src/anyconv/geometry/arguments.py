"""Normalise the integer arguments of a convolution (kernel_size, stride, dilation) to N-tuples.

Pure Python: these run once per call signature, before any tensor is touched.
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from ..errors import invalid, wrong_type

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def as_int(argument: str, value: Any) -> int:
    """Return ``value`` as a Python int; bools and floats are refused.

    >>> as_int("stride", 2)
    2
    """
    if isinstance(value, bool):
        raise wrong_type(argument, value, "an integer, not a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise wrong_type(argument, value, "an integer") from None


def as_size(argument: str, value: Any) -> int:
    """``value`` as :func:`as_int` gives it, but a symbolic size (``torch.SymInt``, as torch.compile
    and torch.export trace with) kept symbolic: ``int()`` on it would fix the traced graph to one size.

    >>> as_size("input_size", 7)
    7
    """
    # dynamo shows a symbolic size as an int, torch.export's non-strict tracing as a SymInt
    if isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool):
        return value  # type: ignore[return-value]
    return as_int(argument, value)


def is_traced(values: tuple[Any, ...]) -> bool:
    """Whether ``values`` may be symbolic sizes of a trace (torch.compile's or torch.export's), which
    cannot serve as a cache key.

    >>> is_traced((3, 4))
    False
    """
    return torch.compiler.is_compiling() or any(isinstance(value, torch.SymInt) for value in values)


def is_sequence(value: Any) -> bool:
    """True for a tuple, list or torch.Size: the containers accepted for per-dimension values."""
    return isinstance(value, (tuple, list))


def spatial_tuple(argument: str, value: Any, ndim: int, minimum: int) -> tuple[int, ...]:
    """Expand an int, or a tuple of 1 or ``ndim`` ints, to ``ndim`` ints, each >= ``minimum``.

    >>> spatial_tuple("kernel_size", 3, 2, 1)
    (3, 3)
    >>> spatial_tuple("dilation", (1, 2, 3), 3, 1)
    (1, 2, 3)
    """
    if is_sequence(value):
        items = tuple(as_int(argument, item) for item in value)
        if len(items) == 1:
            items = items * ndim
        if len(items) != ndim:
            raise invalid(
                argument, tuple(value), f"an int or a tuple of {ndim} ints (one per spatial dimension)"
            )
    else:
        items = (as_int(argument, value),) * ndim
    if any(item < minimum for item in items):
        raise invalid(argument, value, f"integers >= {minimum}")
    return items


def infer_ndim(**arguments: Any) -> int | None:
    """The number of spatial dimensions implied by the first argument given as a tuple longer than 1.

    >>> infer_ndim(kernel_size=3, stride=(1, 2, 2))
    3
    >>> infer_ndim(kernel_size=3) is None
    True
    """
    for value in arguments.values():
        if is_sequence(value) and len(value) > 1:
            return len(value)
    return None


def check_padding_mode(padding_mode: Any) -> str:
    """Return ``padding_mode`` if it is one of torch's four modes.

    >>> check_padding_mode("circular")
    'circular'
    """
    if padding_mode not in PADDING_MODES:
        raise invalid("padding_mode", padding_mode, f"one of {', '.join(map(repr, PADDING_MODES))}")
    return padding_mode
