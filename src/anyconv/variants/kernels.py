"""The kernel variants of Kervolution (Wang et al., CVPR 2019): ``rbf`` and ``polynomial``.

Both are one matrix product plus norms; their options may be learnable, one per output channel.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Option, ProductVariant
from .matrix_products import batched_product
from .options import check_finite, check_positive, check_positive_integer
from .squared import centre_far_from_zero, squared_distance_partials, squared_distances


class RBF(ProductVariant):
    """``exp(-gamma * sum (p - w)^2)``, the Gaussian kernel of Kervolution.

    Option ``gamma`` > 0, a number or a tensor with one value per output channel (learnable,
    as in the paper). Its default ``None`` means ``1 / taps`` (taps = in_channels // groups
    x kernel volume), so an untrained layer's outputs are not all exp(-large) = 0.

    >>> import torch
    >>> variant = RBF(gamma=0.25)
    >>> variant.contract(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[1.0, 0.0]]]), **variant.options)
    tensor([[[0.3679]]])
    """

    name = "rbf"
    defaults = {"gamma": None}
    per_channel = ("gamma",)

    def check_option(self, option: str, value: Option) -> None:
        if value is not None:
            check_positive(option, value, self.name)

    def contract(
        self, fields: torch.Tensor, filters: torch.Tensor, gamma: Option | None = None
    ) -> torch.Tensor:
        gamma = 1 / fields.shape[-1] if gamma is None else gamma
        # exp in place on the fresh product: one pass fewer over the (G, M, O) output
        return (squared_distances(fields, filters) * -gamma).exp_()

    reads = frozenset({"output"})

    def product_backward(
        self, grad: torch.Tensor, filters: torch.Tensor, output: torch.Tensor, gamma: Option | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """d exp(-gamma d) = 2 gamma exp(-gamma d) (w - p) dp: the forward's output, no product."""
        gamma = 1 / filters.shape[-1] if gamma is None else gamma
        return squared_distance_partials((output * grad).mul_(2 * gamma))

    def gradient_centre(self, filters: torch.Tensor) -> torch.Tensor | None:
        """The forward's centre: the gradients are those of a formula of p - w."""
        return centre_far_from_zero(filters)

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        # two outputs beside the result, and a block of centred fields as large (see centred_blocks)
        return 3 * fields_per_chunk * filters


class Polynomial(ProductVariant):
    """``(sum p * w + c)^degree``, the polynomial kernel of Kervolution.

    Options: ``degree``, a positive int (default 3); ``c``, a number or a tensor with one value
    per output channel, learnable as in the paper (default 1.0).

    >>> import torch
    >>> variant = Polynomial(degree=2, c=1.0)
    >>> variant.contract(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[1.0, 1.0]]]), **variant.options)
    tensor([[[16.]]])
    """

    name = "polynomial"
    defaults = {"degree": 3, "c": 1.0}
    per_channel = ("c",)

    def check_option(self, option: str, value: Option) -> None:
        if option == "degree":
            check_positive_integer(option, value, self.name)
        else:
            check_finite(option, value, self.name)

    def contract(
        self, fields: torch.Tensor, filters: torch.Tensor, degree: int = 3, c: Option = 1.0
    ) -> torch.Tensor:
        return (batched_product(fields, filters.mT) + c).pow(degree)

    #: one of them, by the degree (see __init__)
    reads = frozenset({"output", "kept"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # (s + c)^(degree - 1) = |y|^((degree - 1) / degree) for an odd degree; an even degree
        # loses the sign of s + c in y, and its forward keeps s + c for the backward instead
        self.reads = frozenset({"output"} if self.options["degree"] % 2 == 1 else {"kept"})

    def contract_and_keep(
        self, fields: torch.Tensor, filters: torch.Tensor, degree: int = 3, c: Option = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The output and s + c, which the backward of an even degree needs."""
        shifted = batched_product(fields, filters.mT) + c
        return shifted.pow(degree), shifted

    def product_backward(
        self,
        grad: torch.Tensor,
        filters: torch.Tensor,
        output: torch.Tensor | None = None,
        kept: torch.Tensor | None = None,
        degree: int = 3,
        c: Option = 1.0,
    ) -> tuple[torch.Tensor, None, None]:
        """d (s + c)^degree / ds = degree (s + c)^(degree - 1), from y or from the kept s + c.

        From y, in float32, a pair whose y underflows (|s + c| < 1e-13 for degree 3) loses its
        share of the gradient, which is then below 1e-25.
        """
        if kept is not None:
            slope = kept.pow(degree - 1)
        else:
            assert output is not None, "without a kept s + c the engine passes the output"
            slope = output.abs().pow((degree - 1) / degree)
        return slope.mul_(grad).mul_(degree), None, None

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        return 2 * fields_per_chunk * filters
