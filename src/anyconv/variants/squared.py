"""Squared Euclidean distances between fields and filters as one matrix product plus norms.

``||p - w||^2 = ||p||^2 - 2 p.w + ||w||^2``: the cost of the standard convolution and one pass
over the fields for their norms; shared by the ``l2`` and ``rbf`` variants, forward and backward.
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


def squared_distance_partials(scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``product_backward``'s terms for ``sum scale * -||p - w||^2 / 2``, given ``scale`` (G, M, O).

    d/dp (-||p - w||^2 / 2) = w - p and d/dw = p - w: the pair scale is ``scale`` itself, the
    field radial its row sums and the filter radial its column sums. The clamp of
    :func:`squared_distances` only acts on rounding noise, so these are the exact distance's.
    """
    return scale, scale.sum(2, keepdim=True), scale.sum(1).unsqueeze(-1)
