"""Layer 3, variants: how one chunk of receptive fields meets the filters (see :class:`Variant`)."""

from .base import Variant
from .dot import Dot
from .registry import BUILTIN_VARIANTS, register_variant, resolve_variant

__all__ = ["BUILTIN_VARIANTS", "Dot", "Variant", "register_variant", "resolve_variant"]
