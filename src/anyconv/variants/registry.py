"""Variants by name: the built-ins are registered here, and a user's subclass can be passed as is."""

from __future__ import annotations

from typing import Any

from ..errors import ArgumentError, wrong_type
from .base import Variant
from .cosine import Cosine, SharpenedCosine
from .distance import L1, L2, Lp
from .dot import Dot
from .kernels import RBF, Polynomial
from .morphology import MaxPlus, MinPlus

BUILTIN_VARIANTS: dict[str, type[Variant]] = {
    variant.name: variant
    for variant in (Dot, L1, L2, Lp, RBF, Polynomial, Cosine, SharpenedCosine, MaxPlus, MinPlus)
}


def register_variant(variant: type[Variant]) -> type[Variant]:
    """Make ``variant`` available by its name (usable as a class decorator)."""
    BUILTIN_VARIANTS[variant.name] = variant
    return variant


def resolve_variant(variant: str | Variant | type[Variant], **options: Any) -> Variant:
    """A Variant instance from a name, a Variant subclass, or an instance (then no options).

    >>> resolve_variant("dot")
    Dot()
    """
    if isinstance(variant, Variant):
        if options:
            raise ArgumentError(
                f"variant options {sorted(options)} were given with a variant instance {variant!r}: "
                "pass options to the variant's constructor or pass the variant by name"
            )
        return variant
    if isinstance(variant, type) and issubclass(variant, Variant):
        return variant(**options)
    if isinstance(variant, str):
        if variant not in BUILTIN_VARIANTS:
            raise ArgumentError(
                f"variant={variant!r} is invalid: expected one of {', '.join(map(repr, BUILTIN_VARIANTS))} "
                "or a Variant subclass"
            )
        return BUILTIN_VARIANTS[variant](**options)
    raise wrong_type("variant", variant, "a variant name, a Variant subclass or a Variant instance")
