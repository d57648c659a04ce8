"""``dot``: the standard convolution, sum over taps of field times filter, as one matrix product."""

from __future__ import annotations

import torch

from .base import ProductVariant


class Dot(ProductVariant):
    """The multiply-and-sum of the standard convolution: ``sum(p * w)``.

    >>> import torch
    >>> Dot().contract(torch.ones(1, 2, 3), torch.full((1, 1, 3), 2.0))
    tensor([[[6.],
             [6.]]])
    """

    name = "dot"
    dtype_kinds = ("floating", "complex", "integer")

    def contract(self, fields: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        return torch.matmul(fields, filters.transpose(-1, -2))

    def product_backward(self, grad: torch.Tensor, filters: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        """A linear map: the gradient itself scales each pair, and there are no norm terms."""
        return grad, None, None
