"""vmap rules of the engine's custom operators: a vmapped input joins the batch, the rest loops.

When only the input carries the vmapped dimension, it is folded into the batch and the op runs
once; otherwise (a vmapped weight, gradient or option) the op runs once per vmapped slice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def _slice(value: Any, dim: Any, index: int) -> Any:
    if isinstance(value, (list, tuple)) and dim is not None and not isinstance(dim, int):
        return [_slice(item, item_dim, index) for item, item_dim in zip(value, dim)]
    return value if dim is None else value.select(dim, index)


def looped(op: Callable, info: Any, in_dims: tuple, *args: Any) -> tuple[Any, Any]:
    """Run ``op`` once per slice of the vmapped dimension and stack what it returns (dim 0).

    Empty placeholders (a gradient not asked for) are returned unbatched.
    """
    results = [
        op(*(_slice(arg, dim, index) for arg, dim in zip(args, in_dims))) for index in range(info.batch_size)
    ]
    first = results[0]
    outputs: list[torch.Tensor] = []
    dims: list[int | None] = []
    for position in range(len(first)):
        parts = [result[position] for result in results]
        if parts[0].numel() == 0 and parts[0].dim() == 1:
            outputs.append(parts[0])
            dims.append(None)
        else:
            outputs.append(torch.stack(parts))
            dims.append(0)
    kind = list if isinstance(first, list) else tuple
    return kind(outputs), kind(dims)


def forward_rule(op: Callable) -> Callable:
    """The vmap rule of ``anyconv::generalized_conv``: fold a vmapped input into the batch."""

    def rule(info, in_dims, input, weight, bias, option_tensors, *rest):
        input_dim, others = in_dims[0], in_dims[1:]
        option_dims = others[2] or []
        if (
            input_dim is None
            or others[0] is not None
            or others[1] is not None
            or any(dim is not None for dim in option_dims)
        ):
            return looped(op, info, in_dims, input, weight, bias, option_tensors, *rest)
        stacked = input.movedim(input_dim, 0)
        output, kept = op(stacked.flatten(0, 1), weight, bias, option_tensors, *rest)
        kept_dim = None if kept.numel() == 0 else 0
        kept = kept if kept_dim is None else kept.unflatten(0, stacked.shape[:2])
        return (output.unflatten(0, stacked.shape[:2]), kept), (0, kept_dim)

    return rule
