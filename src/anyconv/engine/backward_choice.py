"""Which backward a generalized convolution takes, and what its forward keeps for it: decided here only.

The planner, the forward (what to save), the backward and the custom operators all ask
:func:`choose_backward`; none of them reads the variant's hooks to decide for itself.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..variants import ProductVariant, Variant
from ..variants.filter_sums import FilterGradientSum


class Backward(enum.Enum):
    """The four backwards of the engine, each named after where its gradients come from."""

    #: ``product_backward``'s terms, its matrix products on shifted views of the input
    VIEWS = "views"
    #: ``product_backward``'s terms, its matrix products on each chunk's copied fields
    PRODUCT = "product"
    #: the variant's own ``contract_backward`` on each chunk's copied fields
    OWN = "own"
    #: autograd through ``contract``, one chunk at a time
    AUTOGRAD = "autograd"


def choose_backward(variant: Variant, needs_options: Sequence[bool], views: bool = False) -> Backward:
    """The backward of ``variant`` when ``needs_options`` says which option tensors want gradients.

    ``views``: the plan holds chunks for shifted views (planned where they are faster, see
    ``shifted_views.shifted_views_fit``). Option tensors that want gradients take autograd,
    which alone differentiates a formula with respect to its options.

    >>> from anyconv.variants import L1, RBF
    >>> choose_backward(RBF(), (), views=True), choose_backward(RBF(), (True,), views=True)
    (<Backward.VIEWS: 'views'>, <Backward.AUTOGRAD: 'autograd'>)
    >>> choose_backward(L1(), ())
    <Backward.OWN: 'own'>
    """
    if any(needs_options):
        return Backward.AUTOGRAD
    if isinstance(variant, ProductVariant):
        return Backward.VIEWS if views else Backward.PRODUCT
    if variant.contract_backward is not None:
        return Backward.OWN
    return Backward.AUTOGRAD


def saved_for(variant: Variant, backward: Backward) -> tuple[bool, bool]:
    """(keep the output, keep the kept values): what the forward saves for ``backward``.

    The same on shifted views and on copied fields; autograd reads neither.

    >>> from anyconv.variants import Cosine, Polynomial
    >>> saved_for(Cosine(), Backward.VIEWS), saved_for(Polynomial(degree=2), Backward.PRODUCT)
    ((True, False), (False, True))
    """
    if backward is Backward.AUTOGRAD:
        return False, False
    return "output" in variant.reads, "kept" in variant.reads


def reads_of(
    variant: Variant,
    output: torch.Tensor | None,
    kept: torch.Tensor | None = None,
    field_norms: Callable[[], torch.Tensor] | None = None,
    filter_sum: FilterGradientSum | None = None,
) -> dict[str, Any]:
    """The keyword arguments ``variant.reads`` asks its backward to be handed; norms made lazily.

    >>> from anyconv.variants import RBF
    >>> reads_of(RBF(), torch.ones(1, 1, 1))
    {'output': tensor([[[1.]]])}
    """
    handed: dict[str, Any] = {}
    if "filter_sum" in variant.reads:
        handed["filter_sum"] = filter_sum
    if "output" in variant.reads:
        handed["output"] = output
    if "kept" in variant.reads:
        handed["kept"] = kept
    if "field_norms" in variant.reads:
        assert field_norms is not None, "only a product variant reads the field norms"
        handed["field_norms"] = field_norms()
    return handed


def differentiable_twice(variant: Variant) -> bool:
    """Whether the engine can differentiate the variant's gradients again (``create_graph=True``).

    It does so through ``contract``; a variant whose backward is its own code (the fused loops of
    the non-smooth l1, lp, max_plus, min_plus) refuses.

    >>> from anyconv.variants import L1, L2
    >>> differentiable_twice(L2()), differentiable_twice(L1())
    (True, False)
    """
    return choose_backward(variant, ()) is not Backward.OWN
