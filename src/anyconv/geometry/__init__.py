"""Layer 1, pure integers: normalise convolution arguments and compute every size from them."""

from .arguments import PADDING_MODES, infer_ndim, spatial_tuple
from .geometry import Geometry, make_geometry
from .padding import same_padding
from .summary import Summary, explain
from .transposed import PhaseGroup, transposed_output_size, transposed_phase_groups

__all__ = [
    "PADDING_MODES",
    "Geometry",
    "PhaseGroup",
    "infer_ndim",
    "make_geometry",
    "Summary",
    "explain",
    "same_padding",
    "spatial_tuple",
    "transposed_output_size",
    "transposed_phase_groups",
]
