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

    >>> block, fields, filters = torch.empty(2, 1, 3, 4), torch.ones(1, 8, 5), torch.ones(1, 3, 5)
    >>> write_products(block, fields, filters, torch.tensor([0.0, 1.0, 2.0]))
    >>> block[1, 0, :, 0].tolist()
    [5.0, 6.0, 7.0]
    """
    groups = fields.shape[0]
    biases = None if bias is None else bias.view(groups, -1)
    for group in range(groups):
        group_bias = None if biases is None else biases[group]
        result = _product(fields[group], filters[group], group_bias)
        write_block(block[:, group : group + 1], result.unsqueeze(0))


def _product(rows: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``rows`` (M, K) times ``filters`` (O, K) transposed, plus ``bias`` (O,): (M, O)."""
    if _inner_product_fits(rows, filters):
        # the bias goes into the product's own pass over its result
        return torch.ops.mkldnn._linear_pointwise(rows, filters, bias, "none", [], "")
    if bias is None:
        return torch.mm(rows, filters.t())
    return torch.addmm(bias, rows, filters.t())


def _inner_product_fits(rows: torch.Tensor, filters: torch.Tensor) -> bool:
    """oneDNN's inner product takes these: built into torch, enabled, CPU float32.

    It ran faster than the BLAS behind ``torch.mm`` on the engine's shapes (a field per row, a
    filter per column) on the processors measured (docs/benchmarks.md).
    """
    return (
        rows.dtype == torch.float32
        and filters.dtype == torch.float32
        and rows.device.type == "cpu"
        and _inner_product_available()
        and torch.backends.mkldnn.enabled
    )


@lru_cache(maxsize=1)
def _inner_product_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
