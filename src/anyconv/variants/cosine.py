"""The cosine variants: ``cosine`` similarity and the ``sharpened_cosine`` similarity.

Both are one matrix product divided by per-field and per-filter norms. Their backwards read the
forward's output y and the field norms: s itself is never needed again (see
``ProductVariant``).
"""

from __future__ import annotations

import torch

from .base import Option, ProductVariant
from .matrix_products import batched_product
from .options import check_positive


def _norms(fields: torch.Tensor, filters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Field norms (G, M, 1) and filter norms (G, 1, O)."""
    return (
        torch.linalg.vector_norm(fields, dim=-1, keepdim=True),
        torch.linalg.vector_norm(filters, dim=-1).unsqueeze(1),
    )


def _denominator(field_norms: torch.Tensor, filter_norms: torch.Tensor, eps: float) -> torch.Tensor:
    """|p| |w| + eps, in float32 where the dtype cannot hold eps: in float16 1e-8 rounds to 0 and a
    zero field (padding) would give 0 / 0."""
    # eps added in place: the broadcast product is fresh, and an output-sized allocation fewer
    if torch.finfo(field_norms.dtype).tiny > eps:
        return (field_norms.float() * filter_norms.float()).add_(eps)
    return (field_norms * filter_norms).add_(eps)


def _safe_reciprocal(values: torch.Tensor) -> torch.Tensor:
    """1 / values, and 0 where values is 0: a zero field (padding) has no direction to move along."""
    return torch.where(values > 0, values.reciprocal(), 0)


class Cosine(ProductVariant):
    """``sum p * w / (norm(p) * norm(w) + eps)``, the cosine of the angle between p and w.

    ``eps`` (1e-8, a class attribute: subclass to change it) keeps a zero field, such as
    padding, at output 0.

    >>> import torch
    >>> Cosine().contract(torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[1.0, 0.0], [0.0, -2.0]]]))
    tensor([[[ 0.6000, -0.8000]]])
    """

    name = "cosine"
    eps = 1e-8

    def contract(self, fields: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        field_norms, filter_norms = _norms(fields, filters)
        products = batched_product(fields, filters.mT)
        # divided in place (in float32 for float16, rounded once into the product's dtype)
        return products.div_(_denominator(field_norms, filter_norms, self.eps))

    reads = frozenset({"output", "field_norms"})

    def product_backward(
        self, grad: torch.Tensor, filters: torch.Tensor, output: torch.Tensor, field_norms: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """y = s / den with den = |p| |w| + eps: dy/dp = w / den - y |w| / (den |p|) p, and the twin.

        Exact for every eps, zero and tiny fields included (a zero field's radial term is 0).
        """
        filter_norms = torch.linalg.vector_norm(filters, dim=-1).unsqueeze(1)
        # float32 in float16 (see _denominator) until the terms are returned
        scale = grad / _denominator(field_norms, filter_norms, self.eps)
        radial = scale * output
        field_radial = (radial * filter_norms).sum(2, keepdim=True) * _safe_reciprocal(field_norms)
        filter_radial = (radial * field_norms).sum(1).unsqueeze(-1) * _safe_reciprocal(filter_norms.mT)
        return scale.to(grad.dtype), field_radial.to(grad.dtype), filter_radial.to(grad.dtype)

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        return 2 * fields_per_chunk * filters


class SharpenedCosine(ProductVariant):
    """``sign(s) * abs(s)^exponent`` with ``s = sum p * w / ((norm(p) + q) * (norm(w) + q))``.

    The sharpened cosine similarity (B. Rohrer, 2022): ``q`` > 0 damps fields and filters of
    small norm, ``exponent`` > 0 sharpens the similarity. Both may be tensors with one value per
    output channel, learnable as in the original layer. Defaults: exponent 2.0, q 0.001.
    The gradient at s = 0 is taken as 0 (for exponent < 1 the formula's is infinite).

    >>> import torch
    >>> variant = SharpenedCosine(exponent=2.0, q=1.0)
    >>> variant.contract(torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[0.0, -1.0]]]), **variant.options)
    tensor([[[-0.1111]]])
    """

    name = "sharpened_cosine"
    defaults = {"exponent": 2.0, "q": 1e-3}
    per_channel = ("exponent", "q")

    def check_option(self, option: str, value: Option) -> None:
        check_positive(option, value, self.name)

    def contract(
        self, fields: torch.Tensor, filters: torch.Tensor, exponent: Option = 2.0, q: Option = 1e-3
    ) -> torch.Tensor:
        field_norms, filter_norms = _norms(fields, filters)
        products = batched_product(fields, filters.mT)
        denominator = (field_norms + q) * (filter_norms + q)
        # in place on the fresh product where that keeps the dtype (tensor options may promote it)
        in_place = denominator.dtype == products.dtype
        similarity = products.div_(denominator) if in_place else products / denominator
        magnitude = similarity.abs()
        if torch.is_grad_enabled():
            # autograd runs through here (options that learn): |s|^e at s = 0 has the derivatives
            # inf * 0 (for e < 1) and 0 * log 0, both NaN; 1^e keeps them finite and the where
            # gives them 0 there, the rule of product_backward
            zero = magnitude == 0
            powered = torch.where(zero, 0, torch.where(zero, 1, magnitude).pow(exponent))
            return torch.sign(similarity) * powered
        if torch.result_type(magnitude, exponent) == magnitude.dtype:
            # no graph to keep: the powers and the signs go in place
            return magnitude.pow_(exponent).mul_(similarity.sign_())
        return torch.sign(similarity) * magnitude.pow(exponent)

    reads = frozenset({"output", "field_norms"})

    def product_backward(
        self,
        grad: torch.Tensor,
        filters: torch.Tensor,
        output: torch.Tensor,
        field_norms: torch.Tensor,
        exponent: Option = 2.0,
        q: Option = 1e-3,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The derivative from the forward's output y = sign(s) |s|^e: s itself is never needed.

        With den = (|p| + q)(|w| + q): dy/dp = e |s|^(e-1) (w / den - s / ((|p| + q) |p|) p), where
        e |s|^(e-1) = e |y|^((e-1)/e) and e |s|^(e-1) s = e y. In float64 this matches autograd
        through the formula to about 1e-14 (the power costs about |1 - 1/e| units in the last
        place). In float32 a pair whose y falls under the normal range (|s|^e < 1.2e-38, so
        |s| < 1e-19 for e = 2) loses its share of the gradient, of order e |s|^(e-1) / ((|p| + q)
        (|w| + q)): tiny, but relatively wrong for fields that small.
        """
        filter_norms = torch.linalg.vector_norm(filters, dim=-1).unsqueeze(1)
        field_scale, filter_scale = field_norms + q, filter_norms + q
        radial = (output * grad).mul_(exponent)
        # each of (|p| + q) and (|w| + q) divides a (G, M, 1) or (G, 1, O) sum where it can (a
        # number q), not the (G, M, O) products
        if field_scale.shape[-1] == 1:
            field_sums = radial.sum(2, keepdim=True).div_(field_scale)
        else:
            field_sums = (radial / field_scale).sum(2, keepdim=True)
        field_radial = field_sums * _safe_reciprocal(field_norms)
        filter_radial = radial.sum(1).unsqueeze(-1).div_(filter_scale.mT) * _safe_reciprocal(filter_norms.mT)
        scale = output.abs().pow_((exponent - 1) / exponent)
        if isinstance(exponent, torch.Tensor) or exponent <= 1:
            # 0^((e-1)/e) is 1 or inf there: the gradient at s = 0 is taken as 0
            scale.masked_fill_(output == 0, 0)
        scale.mul_(grad).div_(field_scale).mul_(exponent / filter_scale)
        return scale, field_radial, filter_radial

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        return 3 * fields_per_chunk * filters
