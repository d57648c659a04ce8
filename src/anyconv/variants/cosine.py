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


def _norm_quotient_backward(
    fields: torch.Tensor,
    filters: torch.Tensor,
    scale: torch.Tensor,
    radial: torch.Tensor,
    field_radial: torch.Tensor,
    filter_radial: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of a quotient s = p.w / den(|p|, |w|), given d loss / d s times 1/den (``scale``).

    d s/d p = w / den - radial_p * p / |p| with radial_p = s * d den/d|p| / den; ``radial`` is
    d loss / d s * s, and field_radial / filter_radial are d den/d|p| / (den |p|) and its twin,
    so the radial parts are one row or column sum each.
    """
    grad_fields = torch.bmm(scale, filters)
    grad_fields -= fields * (radial * field_radial).sum(2, keepdim=True)
    grad_filters = torch.bmm(scale.transpose(1, 2), fields)
    grad_filters -= filters * (radial * filter_radial).sum(1).unsqueeze(-1)
    return grad_fields, grad_filters


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
        similarity = torch.bmm(fields, filters.transpose(1, 2)).div_(denominator)
        # d den / d|p| = |w|, so the radial factor is s |w| / (den |p|) (and its twin for w)
        radial = scale * similarity
        return _norm_quotient_backward(
            fields,
            filters,
            scale,
            radial,
            filter_norms * _safe_reciprocal(field_norms),
            field_norms * _safe_reciprocal(filter_norms),
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

    def contract_backward(
        self,
        fields: torch.Tensor,
        filters: torch.Tensor,
        grad: torch.Tensor,
        exponent: Option = 2.0,
        q: Option = 1e-3,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        field_norms, filter_norms = _norms(fields, filters)
        field_scale, filter_scale = field_norms + q, filter_norms + q
        denominator = field_scale * filter_scale
        similarity = torch.bmm(fields, filters.transpose(1, 2)).div_(denominator)
        magnitude = similarity.abs()
        slope = torch.where(magnitude > 0, magnitude.pow(exponent - 1) * exponent, 0)
        scale = grad * slope / denominator
        # d den / d|p| = |w| + q, so the radial factor is s / ((|p| + q) |p|) (and its twin)
        radial = scale * similarity * denominator
        return _norm_quotient_backward(
            fields,
            filters,
            scale,
            radial,
            _safe_reciprocal(field_scale * field_norms),
            _safe_reciprocal(filter_scale * filter_norms),
        )

    def working_elements(self, fields_per_chunk: int, taps: int, filters: int) -> int:
        return 3 * fields_per_chunk * filters
