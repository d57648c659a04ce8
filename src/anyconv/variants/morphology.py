"""The tropical (morphological) variants: ``max_plus`` dilation and ``min_plus`` erosion.

Both run the fused loops of :mod:`.fused`; the gradient goes to the winning tap only.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import Variant
from .filter_sums import FilterGradientSum
from .fused import tropical, tropical_backward


class _Tropical(Variant):
    """What max_plus and min_plus share: the fused tropical loops, told which extreme to take."""

    minimum: ClassVar[bool]
    dtype_kinds = ("floating", "integer")
    reads = frozenset({"filter_sum"})

    def contract(self, fields: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        return tropical(fields, filters, minimum=self.minimum)

    def contract_backward(
        self,
        fields: torch.Tensor,
        filters: torch.Tensor,
        grad: torch.Tensor,
        filter_sum: FilterGradientSum | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return tropical_backward(fields, filters, grad, minimum=self.minimum, filter_sum=filter_sum)

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        return fields_per_chunk * filters


class MaxPlus(_Tropical):
    """``max (p + w)``: grey-scale dilation, the tropical (max, +) convolution.

    The gradient of each output goes to its winning tap (the first one on a tie).

    >>> import torch
    >>> MaxPlus().contract(torch.tensor([[[1.0, 5.0]]]), torch.tensor([[[3.0, -1.0]]]))
    tensor([[[4.]]])
    """

    name = "max_plus"
    minimum = False


class MinPlus(_Tropical):
    """``min (p - w)``: grey-scale erosion, the tropical (min, +) convolution.

    >>> import torch
    >>> MinPlus().contract(torch.tensor([[[1.0, 5.0]]]), torch.tensor([[[3.0, -1.0]]]))
    tensor([[[-2.]]])
    """

    name = "min_plus"
    minimum = True
