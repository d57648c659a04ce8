"""The cosine variants: ``cosine`` similarity and the ``sharpened_cosine`` similarity.

Both are one matrix product divided by per-field and per-filter norms.
"""

from __future__ import annotations

import torch

from .base import Option, Variant
from .options import check_positive


def _norms(fields: torch.Tensor, filters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Field norms (G, M, 1) and filter norms (G, 1, O)."""
    return (
        torch.linalg.vector_norm(fields, dim=-1, keepdim=True),
        torch.linalg.vector_norm(filters, dim=-1).unsqueeze(1),
    )


def _safe_reciprocal(values: torch.Tensor) -> torch.Tensor:
    """1 / values, and 0 where values is 0: a zero field (padding) has no direction to move along."""
    return torch.where(values > 0, values.reciprocal(), 0)


def _remove_radial(grads: torch.Tensor, vectors: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """grads -= vectors * coefficients in place, (G, R, K) and (G, R, 1): no (G, R, K) temporary."""
    return grads.addcmul_(vectors, coefficients, value=-1)


def _norm_quotient_backward(
    fields: torch.Tensor,
    filters: torch.Tensor,
    scale: torch.Tensor,
    field_radial: torch.Tensor,
    filter_radial: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of a quotient s = p.w / den(|p|, |w|), given ``scale`` = d loss / d s / den.

    d s/d p = w / den - s * (d den/d|p|) / den * p / |p|: the first part summed over filters is
    one matrix product, the second a row sum, ``field_radial`` (G, M, 1), times p (and the
    twins for w, ``filter_radial`` (G, O, 1)); two matrix products in all.
    """
    grad_fields = _remove_radial(torch.bmm(scale, filters), fields, field_radial)
    grad_filters = _remove_radial(torch.bmm(scale.transpose(1, 2), fields), filters, filter_radial)
    return grad_fields, grad_filters


def _radial_along(grads: torch.Tensor, vectors: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """(grads . vectors) / |vectors|^2 row by row, (G, R, 1): each row's coefficient along vectors."""
    return torch.einsum("grk,grk->gr", grads, vectors).unsqueeze(-1) * _safe_reciprocal(norms.square())


def _fields_near_eps(
    field_norms: torch.Tensor, filter_norms: torch.Tensor, eps: float
) -> torch.Tensor | None:
    """Indices of the fields where eps / (|p| |w|) may exceed the dtype's rounding, or None if most do.

    Elsewhere ``|p| |w| + eps`` and ``|p| |w|`` round alike. Zero fields and filters are left out:
    their s is 0, so they add nothing to the cosine's radial sums.
    """
    rounding = torch.finfo(field_norms.dtype).eps
    smallest_filter = torch.where(filter_norms > 0, filter_norms, torch.inf).amin()
    near = ((field_norms > 0) & (field_norms * (smallest_filter * rounding) < eps)).squeeze(-1).any(0)
    indices = near.nonzero().squeeze(1)
    return None if 2 * indices.numel() > near.numel() else indices


class Cosine(Variant):
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
        return torch.bmm(fields, filters.transpose(1, 2)) / (field_norms * filter_norms + self.eps)

    def contract_backward(
        self, fields: torch.Tensor, filters: torch.Tensor, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        field_norms, filter_norms = _norms(fields, filters)
        denominator = field_norms * filter_norms + self.eps
        scale = grad / denominator
        near_eps = _fields_near_eps(field_norms, filter_norms, self.eps)
        if near_eps is None:
            # eps counts for most fields: the radial sums need s itself, a third product
            radial = scale * torch.bmm(fields, filters.transpose(1, 2)).div_(denominator)
            # d den / d|p| = |w|, so the radial factor is s |w| / (den |p|) (and its twin for w)
            field_radial = (radial * filter_norms).sum(2, keepdim=True) * _safe_reciprocal(field_norms)
            filter_radial = (radial * field_norms).sum(1).unsqueeze(-1) * _safe_reciprocal(filter_norms.mT)
            return _norm_quotient_backward(fields, filters, scale, field_radial, filter_radial)
        # Where den = |p| |w|, sum_o scale s |w| / |p| = p . (scale @ W) / |p|^2: the gradient is
        # the product's rows minus their part along p (and the twin for w), two products in all.
        grad_fields = torch.bmm(scale, filters)
        grad_filters = torch.bmm(scale.transpose(1, 2), fields)
        field_radial = _radial_along(grad_fields, fields, field_norms)
        filter_radial = _radial_along(grad_filters, filters, filter_norms.mT)
        if near_eps.numel():
            # the few fields where eps counts take the exact sums, from their own s
            radial = scale[:, near_eps] * torch.bmm(fields[:, near_eps], filters.transpose(1, 2)).div_(
                denominator[:, near_eps]
            )
            field_radial[:, near_eps] = (radial * filter_norms).sum(2, keepdim=True) * _safe_reciprocal(
                field_norms[:, near_eps]
            )
            # their share of the column sum was taken as sum scale s den / |w|^2, eps too much
            excess = radial.sum(1).unsqueeze(-1) * self.eps
            filter_radial -= excess * _safe_reciprocal(filter_norms.mT.square())
        return (
            _remove_radial(grad_fields, fields, field_radial),
            _remove_radial(grad_filters, filters, filter_radial),
        )

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        return 2 * fields_per_chunk * filters


class SharpenedCosine(Variant):
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
        similarity = torch.bmm(fields, filters.transpose(1, 2)) / ((field_norms + q) * (filter_norms + q))
        return torch.sign(similarity) * similarity.abs().pow(exponent)

    backward_uses_output = True

    def contract_backward(
        self,
        fields: torch.Tensor,
        filters: torch.Tensor,
        grad: torch.Tensor,
        output: torch.Tensor,
        exponent: Option = 2.0,
        q: Option = 1e-3,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The derivative from the forward's output y = sign(s) |s|^e, two matrix products in all.

        dy/ds = e |s|^(e-1) = e |y|^((e-1)/e), and s dy/ds = e y, so s itself is never needed.
        In float64 this matches autograd through the formula to about 1e-14 (the power costs
        about |1 - 1/e| units in the last place). In float32 a pair whose y falls under the normal
        range (|s|^e < 1.2e-38, so |s| < 1e-19 for e = 2) loses its share of the gradient, of
        order e |s|^(e-1) / ((|p| + q)(|w| + q)): tiny, but relatively wrong for fields that small.
        """
        field_norms, filter_norms = _norms(fields, filters)
        field_scale, filter_scale = field_norms + q, filter_norms + q
        # den = (|p| + q)(|w| + q), a factor per field times one per filter (for a number q): each
        # divides a (G, M, 1) or (G, O, K) tensor where it can, not the (G, M, O) products
        radial = (output * grad).mul_(exponent)
        # d den / d|p| = |w| + q, so the radial factor is e y / ((|p| + q) |p|), summed over filters
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
        scale.mul_(grad).div_(field_scale)
        filter_factor = (exponent / filter_scale).mT
        grad_fields = _remove_radial(torch.bmm(scale, filters * filter_factor), fields, field_radial)
        grad_filters = _remove_radial(torch.bmm(scale.mT, fields).mul_(filter_factor), filters, filter_radial)
        return grad_fields, grad_filters

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        return 3 * fields_per_chunk * filters
