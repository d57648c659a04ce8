"""The standard convolution's step of the fields path: a chunk's fields times the filters, into the output.

One matrix product per group (``variants.matrix_products.row_product``), never a convolution kernel.
"""

from __future__ import annotations

import torch

from ..variants import Dot, Variant
from ..variants.matrix_products import row_product
from .blocks import write_block


def is_plain_product(variant: Variant) -> bool:
    """Whether ``variant`` contracts as the standard convolution: ``Dot``'s ``contract``, not overridden.

    >>> from anyconv.variants import Cosine
    >>> is_plain_product(Dot()), is_plain_product(Cosine())
    (True, False)
    """
    return type(variant).contract is Dot.contract


def has_plain_gradients(variant: Variant) -> bool:
    """Whether ``variant``'s backward is the standard convolution's: ``Dot``'s ``contract``,
    ``product_backward`` (the output gradient is the pair scale) and ``gradient_centre`` (none),
    none of them overridden.

    >>> from anyconv.variants import Cosine
    >>> has_plain_gradients(Dot()), has_plain_gradients(Cosine())
    (True, False)
    """
    kind = type(variant)
    return (
        kind.contract is Dot.contract
        and getattr(kind, "product_backward", None) is Dot.product_backward
        and getattr(kind, "gradient_centre", None) is Dot.gradient_centre
    )


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
