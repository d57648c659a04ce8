"""Sizes of the transposed convolution: its output size and torch's output_padding rule."""

from __future__ import annotations

from typing import Any

from ..errors import invalid
from .arguments import spatial_tuple


def transposed_output_size(
    input_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    output_padding: Any,
    dilation: tuple[int, ...],
) -> tuple[int, ...]:
    """``(in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1`` per dimension.

    torch's rule: each output_padding must be smaller than its stride or its dilation.

    >>> transposed_output_size((4, 4), (3, 3), (2, 2), (1, 1), 1, (1, 1))
    (8, 8)
    """
    ndim = len(input_size)
    extra = spatial_tuple("output_padding", output_padding, ndim, 0)
    for amount, step, spacing in zip(extra, stride, dilation):
        if amount >= step and amount >= spacing:
            raise invalid(
                "output_padding",
                output_padding,
                f"values smaller than either stride {stride} or dilation {dilation}",
            )
    sizes = tuple(
        (size - 1) * step - 2 * pad + spacing * (kernel - 1) + more + 1
        for size, kernel, step, pad, more, spacing in zip(
            input_size, kernel_size, stride, padding, extra, dilation
        )
    )
    if min(sizes) < 1:
        raise invalid(
            "padding", padding, f"an amount that leaves a positive output size, got output size {sizes}"
        )
    return sizes
