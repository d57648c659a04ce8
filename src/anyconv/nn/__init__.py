"""Layer 4, modules: drop-in replacements for torch.nn's convolution-related modules."""

from .fold import Fold
from .unfold import Unfold

__all__ = [
    "Fold",
    "Unfold",
]
