"""Layer 3, variants: how one chunk of receptive fields meets the filters (see :class:`Variant`)."""

from .base import ProductVariant, Variant
from .cosine import Cosine, SharpenedCosine
from .distance import L1, L2, Lp
from .dot import Dot
from .filter_sums import FilterGradientSum
from .fused import last_path, native_kernels_available
from .kernels import RBF, Polynomial
from .morphology import MaxPlus, MinPlus
from .registry import BUILTIN_VARIANTS, register_variant, resolve_variant

__all__ = [
    "BUILTIN_VARIANTS",
    "Cosine",
    "Dot",
    "FilterGradientSum",
    "L1",
    "L2",
    "Lp",
    "MaxPlus",
    "MinPlus",
    "Polynomial",
    "ProductVariant",
    "RBF",
    "SharpenedCosine",
    "Variant",
    "last_path",
    "native_kernels_available",
    "register_variant",
    "resolve_variant",
]
