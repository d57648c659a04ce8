"""Squared Euclidean distances between fields and filters as one matrix product plus norms.

``||p - w||^2 = ||p||^2 - 2 p.w + ||w||^2``: the cost of the standard convolution and one pass
over the fields for their norms; shared by the ``l2`` and ``rbf`` variants.
"""

from __future__ import annotations

import torch


def squared_distances(fields: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """``sum_k (p_k - w_k)^2`` for fields (G, M, K) and filters (G, O, K): (G, M, O), clamped at 0.

    >>> import torch
    >>> squared_distances(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 0.0], [1.0, 4.0]]]))
    tensor([[[5., 4.]]])
    """
    field_norms = torch.linalg.vector_norm(fields, dim=-1, keepdim=True).square()
    filter_norms = torch.linalg.vector_norm(filters, dim=-1).square().unsqueeze(1)
    # rounding can make a tiny distance negative; the clamp keeps exp/sqrt of it well defined
    return torch.baddbmm(field_norms + filter_norms, fields, filters.transpose(1, 2), alpha=-2).clamp_min_(0)


def squared_distances_backward(
    fields: torch.Tensor, filters: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``sum scale * ||p - w||^2`` (scale (G, M, O)): 2 (p rowsum - scale w) and its twin.

    The clamp of :func:`squared_distances` only acts on rounding noise, so the gradient is that
    of the exact distance: d/dp = 2 sum_o scale (p - w), d/dw = -2 sum_m scale (p - w).
    """
    grad_fields = fields * (2 * scale.sum(2, keepdim=True))
    grad_fields.baddbmm_(scale, filters, alpha=-2)
    grad_filters = filters * (2 * scale.sum(1).unsqueeze(-1))
    grad_filters.baddbmm_(scale.transpose(1, 2), fields, alpha=-2)
    return grad_fields, grad_filters
