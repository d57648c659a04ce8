"""The standard convolution's step of the fields path: a chunk's fields times the filters, into the output.

One matrix product per group, through oneDNN's inner product where torch ships it for the tensors
(CPU, float32), else ``torch.matmul``; either way a matrix product, never a convolution kernel.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..variants import Dot, Variant
from .blocks import write_block


def is_plain_product(variant: Variant) -> bool:
    """Whether ``variant`` contracts as the standard convolution: ``Dot``'s ``contract``, not overridden.

    >>> from anyconv.variants import Cosine
    >>> is_plain_product(Dot()), is_plain_product(Cosine())
    (True, False)
    """
    return type(variant).contract is Dot.contract


def write_products(
    block: torch.Tensor, fields: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """``block`` (b, G, Og, *positions) = ``fields`` (G, M, Kg) times ``filters`` (G, Og, Kg), plus ``bias``.

    One product per group, fields first: (M, Og) with the bias added in the product's own pass, then
    written into the block (a transposing copy for a channels-first output). Taken filters first,
    (Og, n) per sample, it would land in a channels-first output with a plain copy, but oneDNN then
    takes the fields as its weights: that product ran up to twice as slow, by an amount that
    changed from one process to the next (docs/benchmarks.md).

    >>> block, fields, filters = torch.empty(2, 1, 3, 4), torch.ones(1, 8, 5), torch.ones(1, 3, 5)
    >>> write_products(block, fields, filters, torch.tensor([0.0, 1.0, 2.0]))
    >>> block[1, 0, :, 0].tolist()
    [5.0, 6.0, 7.0]
    """
    groups, filters_per_group = block.shape[1:3]
    biases = None if bias is None else bias.view(groups, filters_per_group)
    for group in range(groups):
        result = row_product(fields[group], filters[group], None if biases is None else biases[group])
        write_block(block[:, group : group + 1], result.unsqueeze(0))


def row_product(left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``left`` (m, K) times ``right`` (n, K) transposed, plus ``bias`` (n,): (m, n); no autograd
    through oneDNN's inner product, so for tensors that need no gradient.

    >>> row_product(torch.ones(2, 3), torch.ones(4, 3), torch.arange(4.0)).tolist()[0]
    [3.0, 4.0, 5.0, 6.0]
    """
    if inner_product_fits(left, right):
        # the bias goes into the product's own pass over its result
        return torch.ops.mkldnn._linear_pointwise(left, right, bias, "none", [], "")
    if bias is None:
        return torch.mm(left, right.t())
    return torch.addmm(bias, left, right.t())


def inner_product_fits(rows: torch.Tensor, filters: torch.Tensor) -> bool:
    """oneDNN's inner product takes these: built into torch, enabled, CPU float32.

    It ran faster than the BLAS behind ``torch.mm`` on the engine's shapes (a field per row, a
    filter per column) on the processors measured (docs/benchmarks.md).
    """
    return (
        rows.dtype == torch.float32
        and filters.dtype == torch.float32
        and rows.device.type == "cpu"
        and _inner_product_available()
        and bool(torch.backends.mkldnn.enabled)
    )


@lru_cache(maxsize=1)
def _inner_product_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
