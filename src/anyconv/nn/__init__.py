"""Layer 4, modules: drop-in conv modules, their generalized versions, and Unfold/Fold."""

from .conv import Conv1d, Conv2d, Conv3d, ConvNd
from .convert import convert
from .generalized import GeneralizedConv1d, GeneralizedConv2d, GeneralizedConv3d, GeneralizedConvNd

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvNd",
    "GeneralizedConv1d",
    "GeneralizedConv2d",
    "GeneralizedConv3d",
    "GeneralizedConvNd",
    "convert",
]
