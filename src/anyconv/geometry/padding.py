"""Padding as (before, after) pairs per spatial dimension, from every form torch and users write.

Forms: an int, a tuple of N ints (symmetric), a tuple of N (before, after) pairs (asymmetric),
``'valid'`` (none) and ``'same'`` (torch's meaning: total ``dilation * (kernel - 1)``, the extra
element after, refused for strided convolutions as torch refuses it).
"""

from __future__ import annotations

from typing import Any

from ..errors import invalid
from .arguments import as_int, is_sequence

PaddingPairs = tuple[tuple[int, int], ...]


def same_padding(kernel_size: tuple[int, ...], dilation: tuple[int, ...]) -> PaddingPairs:
    """The padding that keeps the output size equal to the input size at stride 1.

    >>> same_padding((3, 4), (1, 1))
    ((1, 1), (1, 2))
    """
    pairs = []
    for kernel, step in zip(kernel_size, dilation):
        total = step * (kernel - 1)
        pairs.append((total // 2, total - total // 2))
    return tuple(pairs)


def padding_pairs(
    padding: Any,
    ndim: int,
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
    stride: tuple[int, ...],
) -> PaddingPairs:
    """Normalise ``padding`` to ``ndim`` (before, after) pairs of non-negative ints.

    >>> padding_pairs(1, 2, (3, 3), (1, 1), (1, 1))
    ((1, 1), (1, 1))
    >>> padding_pairs(((0, 1), 2), 2, (3, 3), (1, 1), (1, 1))
    ((0, 1), (2, 2))
    >>> padding_pairs("same", 1, (4,), (2,), (1,))
    ((3, 3),)
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * ndim
        if padding == "same":
            if any(step != 1 for step in stride):
                raise invalid(
                    "padding",
                    padding,
                    "an int or tuple: padding='same' is not supported for strided convolutions",
                )
            return same_padding(kernel_size, dilation)
        raise invalid("padding", padding, "'same', 'valid', an int, or a tuple of ints or pairs")
    valid = f"an int, 'same', 'valid', or a tuple of {ndim} ints or (before, after) pairs"
    items = tuple(padding) if is_sequence(padding) else (padding,)
    if len(items) == 1:
        items = items * ndim
    if len(items) != ndim:
        raise invalid("padding", padding, valid)
    pairs = []
    for item in items:
        if is_sequence(item):
            if len(item) != 2:
                raise invalid("padding", padding, valid)
            pair = (as_int("padding", item[0]), as_int("padding", item[1]))
        else:
            amount = as_int("padding", item)
            pair = (amount, amount)
        if min(pair) < 0:
            raise invalid("padding", padding, "non-negative amounts")
        pairs.append(pair)
    return tuple(pairs)
