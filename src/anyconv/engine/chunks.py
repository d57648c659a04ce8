"""Chunk planning: split the output positions so the fields of one chunk stay under a budget.

A chunk is a range of samples and, when one sample is too large, a range of rows of the first
output dimension together with the slab of padded input those rows read. Pure integers, cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..geometry import Geometry, make_geometry

#: default bytes for the fields (plus output and working memory) of one chunk: large enough
#: for full-size matrix products, small enough to stay near the cache and far from a blow-up
#: (measured on (32, 64, 32, 32) -> 64, 3x3: 4 MiB about 10% faster than 16 MiB, 1 MiB slower)
DEFAULT_MEMORY_BUDGET = 4 * 2**20


@dataclass(frozen=True)
class Chunk:
    """Samples ``samples`` x output rows ``rows`` (first spatial dimension), read from ``slab``."""

    samples: slice
    rows: slice
    slab: slice
    geometry: Geometry

    @property
    def num_fields(self) -> int:
        """M, the number of receptive fields in the chunk."""
        return (self.samples.stop - self.samples.start) * self.geometry.num_positions


@lru_cache(maxsize=1024)
def plan_chunks(geometry: Geometry, batch: int, bytes_per_field: int, budget: int) -> tuple[Chunk, ...]:
    """The chunks that cover (batch x output positions), each at most ``budget`` bytes when possible.

    >>> g = make_geometry((34, 34), 3)
    >>> [(c.samples, c.rows) for c in plan_chunks(g, 4, 4 * 9, 2 * 32 * 32 * 36)]
    [(slice(0, 2, None), slice(0, 32, None)), (slice(2, 4, None), slice(0, 32, None))]
    """
    padded = geometry.padded_size
    positions = geometry.num_positions
    rows_total = geometry.output_size[0]
    if positions * bytes_per_field <= budget or rows_total == 1:
        samples_per_chunk = max(1, budget // max(1, positions * bytes_per_field))
        row_ranges = [(0, rows_total)]
    else:
        samples_per_chunk = 1
        fields_per_row = positions // rows_total
        rows_per_chunk = max(1, budget // (fields_per_row * bytes_per_field))
        row_ranges = [
            (start, min(start + rows_per_chunk, rows_total)) for start in range(0, rows_total, rows_per_chunk)
        ]
    chunks = []
    for first_row, end_row in row_ranges:
        slab_start = first_row * geometry.stride[0]
        slab_stop = (end_row - 1) * geometry.stride[0] + geometry.field_span[0]
        slab_geometry = make_geometry(
            (slab_stop - slab_start, *padded[1:]),
            geometry.kernel_size,
            stride=geometry.stride,
            dilation=geometry.dilation,
        )
        for start in range(0, batch, samples_per_chunk):
            samples = slice(start, min(start + samples_per_chunk, batch))
            chunks.append(
                Chunk(samples, slice(first_row, end_row), slice(slab_start, slab_stop), slab_geometry)
            )
    return tuple(chunks)
