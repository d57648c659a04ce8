"""The custom operators' schema arguments as the key of a cached planner, shared by every op.

An op gets its geometry as lists and its tensors' shapes as torch.Size; its planner is an
``lru_cache`` that wants them as tuples, in one order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

Plan = TypeVar("Plan")


def plan_of(
    planner: Callable[..., Plan],
    input: torch.Tensor,
    weight: torch.Tensor,
    variant: str,
    options: str,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    memory_budget: int,
) -> Plan:
    """``planner(variant, options, input shape, weight shape, dtype, stride, padding, dilation,
    groups, memory_budget)``, each of them hashable: the plan of one call of an op.

    >>> x, w = torch.ones(1, 2, 5), torch.ones(3, 2, 3)
    >>> plan_of(lambda *key: key[2:5], x, w, "dot", "|", [1], [0, 0], [1], 1, 0)
    ((1, 2, 5), (3, 2, 3), torch.float32)
    """
    return planner(
        variant,
        options,
        tuple(input.shape),
        tuple(weight.shape),
        input.dtype,
        tuple(stride),
        tuple(padding),
        tuple(dilation),
        groups,
        memory_budget,
    )
