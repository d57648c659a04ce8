"""``dot``: the standard convolution, sum over taps of field times filter, as one matrix product."""

from __future__ import annotations

import torch

from .base import Variant


class Dot(Variant):
    """The multiply-and-sum of the standard convolution: ``sum(p * w)``.

    >>> import torch
    >>> Dot().contract(torch.ones(1, 2, 3), torch.full((1, 1, 3), 2.0))
    tensor([[[6.],
             [6.]]])
    """

    name = "dot"
    tapwise = True

    def contract(self, fields: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        return torch.matmul(fields, filters.transpose(-1, -2))

    def contract_backward(
        self, fields: torch.Tensor, filters: torch.Tensor, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two matrix products of a linear map's backward; no forward recomputation.

        Conjugated as torch's autograd does for complex tensors (a no-op view for real ones).
        """
        grad_fields = torch.matmul(grad, filters.conj())
        grad_filters = torch.matmul(grad.transpose(-1, -2), fields.conj())
        return grad_fields, grad_filters
