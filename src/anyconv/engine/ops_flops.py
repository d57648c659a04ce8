"""The engine's custom operators counted by ``torch.utils.flop_counter.FlopCounterMode``.

A variant's multiply-and-sum is counted as the convolution it stands in for: two operations per
(output element, tap of its field), what torch counts for its own convolution of the same
geometry, so that a model converted to ``dot`` counts what the original counts. The other
variants' own work per term differs (an l1 distance's subtraction, absolute value and add, a
max-plus' add and max): the count compares models layer for layer, not instructions. A backward
counts that once per gradient it computes (input, weight), as torch counts its convolution's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.flop_counter import register_flop_formula

# the modules that register the operators, imported before their formulas are registered
from . import ops, tap_loops, triton_conv  # noqa: F401

_FORWARD = [
    torch.ops.anyconv.generalized_conv,
    torch.ops.anyconv.tap_loops,
    torch.ops.anyconv.tap_quotient,
    torch.ops.anyconv.triton_conv,
]
_BACKWARD = [
    torch.ops.anyconv.generalized_conv_backward,
    torch.ops.anyconv.tap_loops_backward,
    torch.ops.anyconv.triton_conv_backward,
]


def convolution_flops(output_shape: tuple[int, ...], weight_shape: tuple[int, ...]) -> int:
    """Two per output element and tap of its field: torch's count for its convolution.

    >>> convolution_flops((2, 8, 5, 5), (8, 4, 3, 3))  # 2 * (2 * 8 * 25) * (4 * 9)
    28800
    """
    return 2 * math.prod(output_shape) * math.prod(weight_shape[1:])


@register_flop_formula(_FORWARD)
def _forward_flops(input_shape: Any, weight_shape: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
    # an operator that returns (output, kept values) gives a shape per tensor
    output_shape = out_shape if isinstance(out_shape, torch.Size) else out_shape[0]
    return convolution_flops(tuple(output_shape), tuple(weight_shape))


@register_flop_formula(_BACKWARD)
def _backward_flops(grad_shape: Any, input_shape: Any, weight_shape: Any, *arguments: Any, **__: Any) -> int:
    # every backward's schema ends with ``needs``: (input gradient, weight gradient) asked for
    needs = arguments[-1]
    return convolution_flops(tuple(grad_shape), tuple(weight_shape)) * sum(bool(need) for need in needs[:2])
