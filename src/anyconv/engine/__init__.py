"""Layer 3, the engine: grouping, chunking under a memory budget, bias, and the custom autograd."""

from . import ops_flops  # noqa: F401  (registers the operators' FLOP counts with torch's counter)
from .chunks import DEFAULT_MEMORY_BUDGET
from .conv import conv
from .conv_transpose import conv_transpose
from .generalized_conv import generalized_conv

__all__ = ["DEFAULT_MEMORY_BUDGET", "conv", "conv_transpose", "generalized_conv"]
