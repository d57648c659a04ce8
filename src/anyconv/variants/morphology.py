"""The tropical (morphological) variants: ``max_plus`` dilation and ``min_plus`` erosion.

Both run the fused loops of :mod:`.fused`; the gradient goes to the winning tap only.
"""

from __future__ import annotations

import torch

from .base import Variant
from .fused import tropical, tropical_backward


class MaxPlus(Variant):
    """``max (p + w)``: grey-scale dilation, the tropical (max, +) convolution.

    The gradient of each output goes to its winning tap (the first one on a tie).

    >>> import torch
    >>> MaxPlus().contract(torch.tensor([[[1.0, 5.0]]]), torch.tensor([[[3.0, -1.0]]]))
    tensor([[[4.]]])
    """

    name = "max_plus"

    def contract(self, fields: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        return tropical(fields, filters, minimum=False)

    def contract_backward(
        self, fields: torch.Tensor, filters: torch.Tensor, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return tropical_backward(fields, filters, grad, minimum=False)

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        return fields_per_chunk * filters


class MinPlus(Variant):
    """``min (p - w)``: grey-scale erosion, the tropical (min, +) convolution.

    >>> import torch
    >>> MinPlus().contract(torch.tensor([[[1.0, 5.0]]]), torch.tensor([[[3.0, -1.0]]]))
    tensor([[[-2.]]])
    """

    name = "min_plus"

    def contract(self, fields: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        return tropical(fields, filters, minimum=True)

    def contract_backward(
        self, fields: torch.Tensor, filters: torch.Tensor, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return tropical_backward(fields, filters, grad, minimum=True)

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        return fields_per_chunk * filters
