"""Layer 4, modules: drop-in conv modules, their generalized versions, and Unfold/Fold."""

from .conv import Conv1d, Conv2d, Conv3d, ConvNd
from .conv_transpose import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from .convert import convert
from .fold import Fold
from .generalized import GeneralizedConv1d, GeneralizedConv2d, GeneralizedConv3d, GeneralizedConvNd
from .interception import Intercepted, Interception, intercept
from .unfold import Unfold

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvNd",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Fold",
    "GeneralizedConv1d",
    "GeneralizedConv2d",
    "GeneralizedConv3d",
    "GeneralizedConvNd",
    "Intercepted",
    "Interception",
    "Unfold",
    "convert",
    "intercept",
]
