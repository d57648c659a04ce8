"""The standard convolution's step of the fields path: a chunk's fields times the filters, into the output.

One matrix product per group, through oneDNN's inner product where torch ships it for the tensors
(CPU, float32), else ``torch.matmul``; either way a matrix product, never a convolution kernel.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..variants import Dot, Variant
from .blocks import copy_with_bias, write_block


def is_plain_product(variant: Variant) -> bool:
    """Whether ``variant`` contracts as the standard convolution: ``Dot``'s ``contract``, not overridden.

    >>> from anyconv.variants import Cosine
    >>> is_plain_product(Dot()), is_plain_product(Cosine())
    (True, False)
    """
    return type(variant).contract is Dot.contract


#: positions of one sample in a chunk from which its product is taken filters first, as (Og, n):
#: it then lands in a channels-first output with a plain copy where the fields-first (n, Og)
#: result needs a transposing one; with fewer positions one product over the whole chunk ran faster
SAMPLE_PRODUCT_POSITIONS = 512


def write_products(
    block: torch.Tensor, fields: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """``block`` (b, G, Og, *positions) = ``fields`` (G, M, Kg) times ``filters`` (G, Og, Kg), plus ``bias``.

    >>> block, fields, filters = torch.empty(2, 1, 3, 4), torch.ones(1, 8, 5), torch.ones(1, 3, 5)
    >>> write_products(block, fields, filters, torch.tensor([0.0, 1.0, 2.0]))
    >>> block[1, 0, :, 0].tolist()
    [5.0, 6.0, 7.0]
    """
    samples, groups, filters_per_group = block.shape[:3]
    positions = fields.shape[1] // samples
    biases = None if bias is None else bias.view(groups, filters_per_group)
    # positions contiguous in the output: channels first
    by_sample = positions >= SAMPLE_PRODUCT_POSITIONS and block.stride(-1) == 1
    for group in range(groups):
        group_bias = None if biases is None else biases[group]
        if not by_sample:
            result = row_product(fields[group], filters[group], group_bias)
            write_block(block[:, group : group + 1], result.unsqueeze(0))
            continue
        column_bias = None if group_bias is None else group_bias.unsqueeze(1)
        for sample in range(samples):
            rows = fields[group, sample * positions : (sample + 1) * positions]
            target = block[sample, group].view(filters_per_group, positions)
            _product_into(target, filters[group], rows, column_bias)


def row_product(left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``left`` (m, K) times ``right`` (n, K) transposed, plus ``bias`` (n,): (m, n); no autograd
    through oneDNN's inner product, so for tensors that need no gradient.

    >>> row_product(torch.ones(2, 3), torch.ones(4, 3), torch.arange(4.0)).tolist()[0]
    [3.0, 4.0, 5.0, 6.0]
    """
    if _inner_product_fits(left, right):
        # the bias goes into the product's own pass over its result
        return torch.ops.mkldnn._linear_pointwise(left, right, bias, "none", [], "")
    if bias is None:
        return torch.mm(left, right.t())
    return torch.addmm(bias, left, right.t())


def _product_into(
    target: torch.Tensor, left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """``target`` (m, n), any strides, = ``left`` (m, K) times ``right`` (n, K)^T, plus ``bias`` (m, 1)."""
    if _inner_product_fits(left, right):
        copy_with_bias(target, row_product(left, right, None), bias)
    elif bias is None:
        torch.mm(left, right.t(), out=target)
    else:
        torch.addmm(bias, left, right.t(), out=target)


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
        and bool(torch.backends.mkldnn.enabled)
    )


@lru_cache(maxsize=1)
def _inner_product_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
