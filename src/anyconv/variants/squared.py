"""Squared Euclidean distances between fields and filters as one matrix product plus norms.

``||p - w||^2 = ||p - c||^2 - 2 (p - c).(w - c) + ||w - c||^2`` for any centre c: the cost of the
standard convolution and one pass over the fields; shared by ``l2`` and ``rbf``, forward and backward.
The centre (the filters' mean, tap by tap) keeps data far from zero from cancelling, and the few
pairs whose distance is still small beside the norms it came from are computed again tap by tap
(see docs/numerics.md).
"""

from __future__ import annotations

import math
import weakref

import torch

#: a product-form distance under this share of the centred norms it came from may have lost more
#: than a few units of rounding to cancellation: it is computed again from the differences
CANCELLATION_SHARE = 0.25
#: a field's and a filter's squared norms this far apart (their ratio, either way) cannot cancel:
#: ``||p - w||^2 >= (|p| - |w|)^2`` (Cauchy-Schwarz), at least CANCELLATION_SHARE of
#: ``|p|^2 + |w|^2`` once ``|p| / |w|`` is past the larger root of ``(1 - s)(t^2 + 1) = 2t``
NORMS_APART = ((1 + math.sqrt(1 - (1 - CANCELLATION_SHARE) ** 2)) / (1 - CANCELLATION_SHARE)) ** 2
#: elements of a block of centred fields however few the outputs (a smaller copy saves nothing)
MIN_CENTRED_BLOCK = 2**16
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

    Traced by torch.compile, which does not follow a branch on data, it always centres and
    skips the check (see docs/numerics.md).
    """
    compiling = torch.compiler.is_compiling()
    centre = centre_far_from_zero(filters) if compiling else _centre_of_last_filters(filters)
    if centre is None:
        return _distances(fields, filters, fields, filters, compiling)
    centred_filters = filters - centre
    blocks = centred_blocks(fields.shape[1], fields.shape[2], filters.shape[1])
    if len(blocks) <= 1:
        return _distances(fields - centre, centred_filters, fields, filters, compiling)
    distances = fields.new_empty(fields.shape[0], fields.shape[1], filters.shape[1])
    for rows in blocks:
        block = fields[:, rows]
        distances[:, rows] = _distances(block - centre, centred_filters, block, filters, compiling)
    return distances


def centred_blocks(rows: int, taps: int, outputs: int) -> list[slice]:
    """Blocks of the rows of fields (G, ``rows``, ``taps``) to centre one at a time.

    A block's centred copy holds at most the elements of the chunk's output (``rows`` x
    ``outputs`` per group) or MIN_CENTRED_BLOCK: the engine sizes its chunks with that much room
    for it (``working_elements``), so that the centring, needed only for data far from zero, does
    not make every chunk smaller.

    >>> centred_blocks(10, 4, 8)
    [slice(None, None, None)]
    >>> centred_blocks(10_000, 1_000, 64)[:2]
    [slice(0, 640, None), slice(640, 1280, None)]
    """
    if not isinstance(rows, int) or taps <= outputs:
        # a symbolic size (torch.compile with dynamic shapes) takes one block
        return [slice(None)]
    step = max(1, rows * outputs // taps, MIN_CENTRED_BLOCK // taps)
    return [slice(start, start + step) for start in range(0, max(rows, 1), step)]


def _distances(
    centred_fields: torch.Tensor,
    centred_filters: torch.Tensor,
    fields: torch.Tensor,
    filters: torch.Tensor,
    compiling: bool,
) -> torch.Tensor:
    """The product form on centred fields and filters, pairs that cancelled recomputed from the originals."""
    filter_norms = _squared_norms(centred_filters).unsqueeze(1)
    field_norms = _squared_norms(centred_fields).unsqueeze(-1)
    norms = field_norms + filter_norms
    distances = torch.baddbmm(norms, centred_fields, centred_filters.transpose(1, 2), alpha=-2)
    if compiling:
        return distances.clamp_min_(0)
    if norms_apart(field_norms, filter_norms):
        # no pair can have cancelled (nor be negative): nothing to check
        return distances
    # the margin is NaN also where the product form gave NaN (inf - inf) or the norms overflowed:
    # the differences then say what the formula gives, inf or NaN. amin propagates NaN, and is
    # one quick reduction where a boolean all() is several times slower
    with torch.no_grad():
        # into the norms, read no more: one pass
        # detached: under forward mode (jvp) an out= function refuses a tensor that has a tangent
        margin = torch.add(distances.detach(), norms.detach(), alpha=-CANCELLATION_SHARE, out=norms.detach())
    # a float compared in Python: NaN is not >= 0 either
    if distances.numel() and not margin.amin().item() >= 0:
        _recompute(distances, ~(margin >= 0), fields, filters)
    return distances


def norms_apart(field_norms: torch.Tensor, filter_norms: torch.Tensor) -> bool:
    """Whether, group by group, all fields' squared norms (G, M, 1) are finite and NORMS_APART above
    all filters' (G, 1, O), or all below: then no pair can cancel, which the norms' extremes tell
    without a pass over the pairs.

    Activations against freshly initialised filters are far apart; trained distance filters that
    look like their fields are not, and take the pair by pair check.

    >>> norms_apart(torch.tensor([[[50.0], [9.0]]]), torch.tensor([[[1.0, 1.5]]]))
    True
    >>> norms_apart(torch.tensor([[[50.0], [2.0]]]), torch.tensor([[[1.0, 1.5]]]))
    False
    >>> norms_apart(torch.tensor([[[float("inf")]]]), torch.tensor([[[1.0]]]))
    False
    """
    if not field_norms.numel() or not filter_norms.numel():
        return True
    fields_low, fields_high = _extremes(field_norms)
    filters_low, filters_high = _extremes(filter_norms)
    # floats compared in Python: NaN is neither finite nor apart
    return all(
        high < math.inf
        and filter_high < math.inf
        and (low >= NORMS_APART * filter_high or NORMS_APART * high <= filter_low)
        for low, high, filter_low, filter_high in zip(fields_low, fields_high, filters_low, filters_high)
    )


def _extremes(norms: torch.Tensor) -> tuple[list[float], list[float]]:
    """The lowest and the highest of ``norms`` (G, ...) group by group, as floats.

    >>> _extremes(torch.tensor([[[3.0], [1.0]], [[2.0], [5.0]]]))
    ([1.0, 2.0], [3.0, 5.0])
    """
    norms = norms.detach()
    if norms.shape[0] == 1:
        # a reduction over everything is several times quicker than one along a dimension
        low, high = torch.aminmax(norms)
        return [low.item()], [high.item()]
    low, high = torch.aminmax(norms.flatten(1), dim=1)
    return low.tolist(), high.tolist()


def centre_far_from_zero(filters: torch.Tensor) -> torch.Tensor | None:
    """The filters' (G, O, K) mean tap by tap, (G, 1, K), where they sit far from zero; else None.

    A group's centre is zero where its filters spread wider than they sit from zero (freshly
    initialised ones do: data far from zero against them does not cancel anyway), and None stands
    for all zero, so that the caller makes no centred copy. Under torch.compile, which traces no
    branch on data, it is never None.

    >>> centre_far_from_zero(torch.tensor([[[1000.0, 2.0], [1002.0, 4.0]]]))
    tensor([[[1001.,    3.]]])
    >>> centre_far_from_zero(torch.tensor([[[1.0, -2.0], [-1.0, 2.0]]])) is None
    True
    """
    # an infinite or NaN filter tap leaves that tap uncentred: its pairs are recomputed anyway
    centre = filters.mean(1, keepdim=True).nan_to_num_(0.0, 0.0, 0.0)
    spread = _squared_norms(filters - centre).mean(-1, keepdim=True).unsqueeze(-1)
    offset = _squared_norms(centre).unsqueeze(-1) > spread
    if not torch.compiler.is_compiling() and not offset.any():
        return None
    return centre * offset


#: the filters of the last eager call, their version and their centre: the engine contracts every
#: chunk of a call with the same filters tensor, whose centre is then taken once
_last_filters: tuple[weakref.ref, int, torch.Tensor | None] | None = None


def _centre_of_last_filters(filters: torch.Tensor) -> torch.Tensor | None:
    """centre_far_from_zero(filters), taken again only for another tensor or one written since."""
    global _last_filters
    if _last_filters is not None:
        reference, version, centre = _last_filters
        if reference() is filters and version == filters._version:
            return centre
    centre = centre_far_from_zero(filters)
    _last_filters = (weakref.ref(filters), filters._version, centre)
    return centre


def _squared_norms(rows: torch.Tensor) -> torch.Tensor:
    """sum of squares over the last dimension, in one reduction (vecdot would make a product first).

    Recorded by autograd, it is the sum of the squares instead: the square of the norm has no
    second derivative where a row is zero (a depthwise filter minus its centre, itself), where
    the sum's is 2 everywhere.

    >>> rows = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    >>> (gradient,) = torch.autograd.grad(_squared_norms(rows).sum(), rows, create_graph=True)
    >>> torch.autograd.grad(gradient.sum(), rows)[0]
    tensor([[2., 2., 2.]], dtype=torch.float64)
    """
    if rows.requires_grad and torch.is_grad_enabled():
        return (rows * rows).sum(-1)
    return torch.linalg.vector_norm(rows, dim=-1).square()


def _recompute(
    distances: torch.Tensor, suspect: torch.Tensor, fields: torch.Tensor, filters: torch.Tensor
) -> None:
    """Write ``sum_k (p_k - w_k)^2`` into ``distances`` where ``suspect``, a block of rows at a time."""
    rows, outputs, taps = distances.shape[1], distances.shape[2], fields.shape[-1]
    # the indices of a block's pairs stay under _RECOMPUTE_BLOCK, and so do the differences
    rows_per_block = max(1, _RECOMPUTE_BLOCK // (taps * outputs))
    pairs_per_part = max(1, _RECOMPUTE_BLOCK // taps)
    for start in range(0, rows, rows_per_block):
        group, row, output = suspect[:, start : start + rows_per_block].nonzero(as_tuple=True)
        for part in range(0, group.numel(), pairs_per_part):
            g, o = group[part : part + pairs_per_part], output[part : part + pairs_per_part]
            m = row[part : part + pairs_per_part] + start
            distances[g, m, o] = (fields[g, m] - filters[g, o]).square().sum(-1)


def squared_distance_partials(scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``product_backward``'s terms for ``sum scale * -||p - w||^2 / 2``, given ``scale`` (G, M, O).

    d/dp (-||p - w||^2 / 2) = w - p and d/dw = p - w: the pair scale is ``scale`` itself, the
    field radial its row sums and the filter radial its column sums.
    """
    return scale, scale.sum(2, keepdim=True), scale.sum(1).unsqueeze(-1)
