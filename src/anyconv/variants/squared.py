"""Squared Euclidean distances between fields and filters as one matrix product plus norms.

``||p - w||^2 = ||p - c||^2 - 2 (p - c).(w - c) + ||w - c||^2`` for any centre c: the cost of the
standard convolution and one pass over the fields; shared by ``l2`` and ``rbf``, forward and backward.
The centre (the filters' mean, tap by tap) keeps data far from zero from cancelling, and the few
pairs whose distance is still small beside the norms it came from are computed again tap by tap
(see docs/numerics.md).
"""

from __future__ import annotations

import torch

#: a product-form distance under this share of the centred norms it came from may have lost more
#: than a few units of rounding to cancellation: it is computed again from the differences
CANCELLATION_SHARE = 0.25
#: (pair, tap) elements of one block of the recomputation
_RECOMPUTE_BLOCK = 2**18


def squared_distances(fields: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """``sum_k (p_k - w_k)^2`` for fields (G, M, K) and filters (G, O, K): (G, M, O).

    Within a few units of rounding of the sum of squared differences whatever the data's offset,
    and inf or NaN exactly where that sum has them.

    >>> import torch
    >>> squared_distances(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 0.0], [1.0, 4.0]]]))
    tensor([[[5., 4.]]])
    >>> p = torch.tensor([[[1000.0, 1000.0]]])
    >>> squared_distances(p, p + torch.tensor([[[0.0, 0.0], [0.125, 0.0]]]))
    tensor([[[0.0000, 0.0156]]])
    """
    centre = filters.mean(1, keepdim=True)
    # an infinite or NaN filter tap leaves that tap uncentred: its pairs are recomputed anyway
    centre = torch.where(centre.isfinite(), centre, 0)
    centred_fields, centred_filters = fields - centre, filters - centre
    field_norms = torch.linalg.vector_norm(centred_fields, dim=-1, keepdim=True).square()
    filter_norms = torch.linalg.vector_norm(centred_filters, dim=-1).square().unsqueeze(1)
    norms = field_norms + filter_norms
    distances = torch.baddbmm(norms, centred_fields, centred_filters.transpose(1, 2), alpha=-2)
    # also true where the product form gave NaN (inf - inf) or the norms overflowed: the
    # differences then say what the formula gives, inf or NaN
    suspect = ~(distances >= norms.mul_(CANCELLATION_SHARE))
    if suspect.any():
        _recompute(distances, suspect, fields, filters)
    return distances


def _recompute(
    distances: torch.Tensor, suspect: torch.Tensor, fields: torch.Tensor, filters: torch.Tensor
) -> None:
    """Write ``sum_k (p_k - w_k)^2`` into ``distances`` where ``suspect``, a block of rows at a time."""
    groups, rows, outputs = distances.shape
    taps = fields.shape[-1]
    step = max(1, _RECOMPUTE_BLOCK // (taps * outputs))
    for start in range(0, rows, step):
        block = suspect[:, start : start + step]
        group, row, output = block.nonzero(as_tuple=True)
        for part in range(0, group.numel(), max(1, _RECOMPUTE_BLOCK // taps)):
            g = group[part : part + _RECOMPUTE_BLOCK // taps]
            m = row[part : part + _RECOMPUTE_BLOCK // taps] + start
            o = output[part : part + _RECOMPUTE_BLOCK // taps]
            distances[g, m, o] = (fields[g, m] - filters[g, o]).square().sum(-1)


def squared_distance_partials(scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``product_backward``'s terms for ``sum scale * -||p - w||^2 / 2``, given ``scale`` (G, M, O).

    d/dp (-||p - w||^2 / 2) = w - p and d/dw = p - w: the pair scale is ``scale`` itself, the
    field radial its row sums and the filter radial its column sums.
    """
    return scale, scale.sum(2, keepdim=True), scale.sum(1).unsqueeze(-1)
