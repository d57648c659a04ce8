"""Layer 2, tensors in and out: padding, receptive fields, im2col/col2im and convolutions."""

from .fold import fold
from .pad import pad
from .patches import patches
from .unfold import unfold

__all__ = ["fold", "pad", "patches", "unfold"]
