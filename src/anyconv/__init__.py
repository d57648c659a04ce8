"""anyconv: convolution as a tensor multiplication over receptive fields, for any N and any variant.

>>> import torch, anyconv
>>> anyconv.unfold(torch.randn(1, 2, 4, 4, 4), 2).shape
torch.Size([1, 16, 27])
"""

from . import nn, variants
from .engine import conv, generalized_conv
from .engine.conv_transpose import conv_transpose
from .errors import ArgumentError, ArgumentTypeError
from .functional import fold, patches, unfold
from .geometry import Geometry, make_geometry
from .geometry.summary import Summary, explain
from .nn import convert, intercept

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "Geometry",
    "Summary",
    "conv",
    "conv_transpose",
    "convert",
    "explain",
    "fold",
    "generalized_conv",
    "intercept",
    "make_geometry",
    "nn",
    "patches",
    "unfold",
    "variants",
]
