"""Which path computes a generalized convolution, chosen in one place from its geometry and variant.

The fields path (``contraction``) computes every call; the paths named here are faster where they fit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..geometry import Geometry
from ..variants import Variant
from .pointwise import pointwise_conv, pointwise_fits
from .tap_loops import tap_loops_conv, tap_loops_fit
from .tap_products import tap_products_conv, tap_products_fit

#: (input, weight, bias) -> output
Path = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def fast_path(
    input: torch.Tensor, weight: torch.Tensor, variant: Variant, geometry: Geometry, groups: int, budget: int
) -> Path | None:
    """The path that computes this call of ``generalized_conv`` when it is not the fields path, else None.

    ``input`` is batched; ``geometry`` its zero padding still to apply (other modes applied already).

    >>> import torch
    >>> from anyconv.geometry import make_geometry
    >>> from anyconv.variants import Cosine
    >>> x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)
    >>> fast_path(x, w, Cosine(), make_geometry((6, 6), 3), 1, 2**22) is None
    True
    >>> fast_path(x, w[:, :, :1, :1], Cosine(), make_geometry((6, 6), 1), 1, 2**22) is None
    False
    """
    if torch._C._are_functorch_transforms_active():
        # torch.func's transforms see through the custom operator of the fields path only
        return None
    if pointwise_fits(variant, input, geometry):
        return lambda input, weight, bias: pointwise_conv(input, weight, bias, variant, geometry, groups)
    if tap_loops_fit(variant, input, weight, groups):
        return lambda input, weight, bias: tap_loops_conv(
            input, weight, bias, variant, geometry, groups, budget
        )
    if tap_products_fit(variant, input, weight, groups):
        return lambda input, weight, bias: tap_products_conv(
            input, weight, bias, variant, geometry, groups, budget
        )
    return None
