"""The distance variants ``l1`` (AdderNet), ``l2`` and ``lp``: minus a distance between p and w.

``l2`` is one matrix product plus norms; ``l1`` and ``lp`` run the fused loops of :mod:`.fused`.
"""

from __future__ import annotations

import torch

from .base import Option, ProductVariant, Variant
from .filter_sums import FilterGradientSum, handed_back
from .fused import l1_backward, l1_distances, power_sums, power_sums_backward
from .options import check_flag, check_positive
from .power_roots import root_factor_
from .squared import centre_far_from_zero, squared_distance_partials, squared_distances


class L1(Variant):
    """``-sum |p - w|``, the adder layer of AdderNet (Chen et al., "AdderNet: Do We Really Need
    Multiplications in Deep Learning?", CVPR 2020).

    Option ``adder_grad`` (default False, the exact gradient ``sign``): True uses the paper's
    training rule, the full-precision filter gradient ``p - w`` in place of ``sign(p - w)`` and
    the HardTanh-clipped field gradient ``clip(w - p, -1, 1)``. The paper's adaptive learning
    rate (each layer's gradient rescaled by ``eta * sqrt(k) / ||grad||``) acts on a whole
    layer's gradient inside the optimiser step, so it is not part of the layer; a
    ``weight.register_hook`` does it (see the README).

    >>> import torch
    >>> L1().contract(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 4.0]]]))
    tensor([[[-3.]]])
    >>> L1(adder_grad=True)
    L1(adder_grad=True)
    """

    name = "l1"
    defaults = {"adder_grad": False}
    dtype_kinds = ("floating", "integer")
    reads = frozenset({"filter_sum"})

    def check_option(self, option: str, value: Option) -> None:
        check_flag(option, value, self.name)

    def contract(self, fields: torch.Tensor, filters: torch.Tensor, adder_grad: bool = False) -> torch.Tensor:
        return l1_distances(fields, filters)

    def contract_backward(
        self,
        fields: torch.Tensor,
        filters: torch.Tensor,
        grad: torch.Tensor,
        adder_grad: bool = False,
        filter_sum: FilterGradientSum | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not adder_grad:
            return l1_backward(fields, filters, grad, filter_sum=filter_sum)
        grad_fields, _ = l1_backward(fields, filters, grad, adder=True)
        # AdderNet's filter gradient sum_m g (p - w) is a matrix product
        grad_filters = torch.bmm(grad.transpose(1, 2), fields)
        grad_filters -= filters * grad.sum(1).unsqueeze(-1)
        return handed_back(grad_fields, grad_filters, filter_sum)

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        # the kernels' padded copy of the output (or its gradient)
        return fields_per_chunk * filters


class L2(ProductVariant):
    """``-sum (p - w)^2``, minus the squared Euclidean distance, as one matrix product plus norms.

    Centred on the filters' mean, so that data far from zero does not cancel (see
    :func:`~anyconv.variants.squared.squared_distances`).

    >>> import torch
    >>> L2().contract(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 4.0]]]))
    tensor([[[-5.]]])
    """

    name = "l2"

    def contract(self, fields: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        return squared_distances(fields, filters).neg_()

    def product_backward(
        self, grad: torch.Tensor, filters: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """d(-||p - w||^2) = 2 (w - p) dp: the pair scale is 2 grad."""
        return squared_distance_partials(2 * grad)

    def gradient_centre(self, filters: torch.Tensor) -> torch.Tensor | None:
        """The forward's centre: the gradients 2 grad (w - p) are those of p - w."""
        return centre_far_from_zero(filters)

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        # the norms beside the output, and a block of centred fields as large (see centred_blocks)
        return 2 * fields_per_chunk * filters


class Lp(Variant):
    """``-(sum |p - w|^p)^(1/p)``, minus the Lp distance; option ``p`` > 0 (default 2.0).

    ``p`` is one number for the layer (the fused loops take it as a constant). ``p=1`` is
    ``l1``; ``p=2`` the Euclidean distance, whose square is ``l2``.

    >>> import torch
    >>> Lp(p=3).contract(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 0.0]]]), p=3)
    tensor([[[-2.0801]]])
    """

    name = "lp"
    defaults = {"p": 2.0}
    reads = frozenset({"filter_sum"})

    def check_option(self, option: str, value: Option) -> None:
        check_positive(option, value, self.name)

    def contract(self, fields: torch.Tensor, filters: torch.Tensor, p: float = 2.0) -> torch.Tensor:
        return power_sums(fields, filters, p).pow_(1 / p).neg_()

    def contract_backward(
        self,
        fields: torch.Tensor,
        filters: torch.Tensor,
        grad: torch.Tensor,
        p: float = 2.0,
        filter_sum: FilterGradientSum | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # d(-S^(1/p)) = -S^(1/p - 1) / p dS: the per-output factor the fused backward is given
        sums = power_sums(fields, filters, p)
        return power_sums_backward(fields, filters, grad * root_factor_(sums, p), p, filter_sum)

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        return fields_per_chunk * filters
