"""Chunk planning: split the output positions so the fields of one chunk stay under a budget.

A chunk is a range of samples and a box of output positions (a slice per spatial dimension),
together with the slab of padded input that box reads. When one sample is too large, the box is
one index along the leading dimensions, a range along the first dimension whose lines fit, and
whole along the rest: so a (B, C, 1, T) signal is split along time as an image is along rows.
Pure integers, cached.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import invalid, wrong_type
from ..geometry import Geometry, make_geometry

#: default bytes for the fields (plus output and working memory) of one chunk: large enough
#: for full-size matrix products, small enough to stay near the cache and far from a blow-up
#: (measured: docs/engine.md)
DEFAULT_MEMORY_BUDGET = 4 * 2**20

#: the smallest budget taken: below it each chunk's fixed cost (a step of a Python loop, a few
#: small copies, a product call) outweighs its work, and a budget of a few bytes would run one
#: chunk per output position. A smaller ``memory_budget`` is raised to it.
MINIMUM_MEMORY_BUDGET = 256 * 2**10


def check_memory_budget(memory_budget: Any) -> int | None:
    """``memory_budget`` as given, if it is None (the default) or a positive int of bytes.

    The one check of the argument, wherever it is taken: the functions, the modules, ``convert``.

    >>> check_memory_budget(2**20), check_memory_budget(None)
    (1048576, None)
    """
    if memory_budget is None:
        return None
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int):
        raise wrong_type("memory_budget", memory_budget, "a positive number of bytes (int) or None")
    if memory_budget < 1:
        raise invalid("memory_budget", memory_budget, "a positive number of bytes")
    return memory_budget


def resolve_budget(memory_budget: Any) -> int:
    """The bytes per chunk for ``memory_budget``: the default for None, at least the floor.

    >>> resolve_budget(None) == DEFAULT_MEMORY_BUDGET, resolve_budget(1) == MINIMUM_MEMORY_BUDGET
    (True, True)
    """
    budget = check_memory_budget(memory_budget)
    return DEFAULT_MEMORY_BUDGET if budget is None else max(budget, MINIMUM_MEMORY_BUDGET)


@dataclass(frozen=True)
class Chunk:
    """Samples ``samples`` x output positions ``region`` (a slice per dimension), read from ``slab``.

    ``slab`` is a slice per dimension of the padded input; ``geometry`` is the convolution of
    that slab, unpadded, whose output is the region.
    """

    samples: slice
    region: tuple[slice, ...]
    slab: tuple[slice, ...]
    geometry: Geometry

    @property
    def num_fields(self) -> int:
        """M, the number of receptive fields in the chunk."""
        return (self.samples.stop - self.samples.start) * self.geometry.num_positions


@lru_cache(maxsize=1024)
def plan_chunks(
    geometry: Geometry, batch: int, bytes_per_output: int, budget: int, bytes_per_input: int = 0
) -> tuple[Chunk, ...]:
    """The chunks that cover (batch x output positions), each at most ``budget`` bytes when possible.

    A chunk costs ``bytes_per_output`` per output position it holds plus ``bytes_per_input`` per
    position of the padded slab it reads (the kernel's halo included), for work laid out over
    the slab. Only a single output position of a single sample can be over the budget. The
    chunks of a range are as few as the budget allows, and each holds at least half the budget
    when there are several (see ``_parts``), so there are about ``2 * total / budget``.

    >>> g = make_geometry((34, 34), 3)
    >>> [(c.samples, c.region[0]) for c in plan_chunks(g, 4, 4 * 9, 2 * 32 * 32 * 36)]
    [(slice(0, 2, None), slice(0, 32, None)), (slice(2, 4, None), slice(0, 32, None))]
    >>> [c.region[1] for c in plan_chunks(make_geometry((1, 100), (1, 3)), 1, 10, 500)]
    [slice(0, 50, None), slice(50, 98, None)]
    >>> [c.slab[1] for c in plan_chunks(make_geometry((1, 100), (1, 3)), 1, 0, 500, bytes_per_input=10)]
    [slice(0, 34, None), slice(32, 67, None), slice(65, 100, None)]
    """
    output = geometry.output_size

    # lists, not generators, in the products below: torch.compile traces this function
    def cost(counts: tuple[int, ...]) -> int:
        # a box of ``counts`` outputs per dimension: its outputs and the slab they read
        spans = zip(counts, geometry.stride, geometry.field_span)
        slab = math.prod([(count - 1) * step + span for count, step, span in spans])
        return math.prod(counts) * bytes_per_output + slab * bytes_per_input

    sample_bytes = cost(output)
    if sample_bytes <= budget:
        samples_per_chunk = max(1, budget // max(1, sample_bytes))
        regions = [tuple(slice(0, size) for size in output)]
    else:
        samples_per_chunk = 1
        regions = _split_one_sample(output, cost, budget)
    chunks = []
    for region in regions:
        slab = tuple(
            slice(part.start * step, (part.stop - 1) * step + span)
            for part, step, span in zip(region, geometry.stride, geometry.field_span)
        )
        slab_geometry = make_geometry(
            tuple(part.stop - part.start for part in slab),
            geometry.kernel_size,
            stride=geometry.stride,
            dilation=geometry.dilation,
        )
        for samples in _parts(batch, samples_per_chunk):
            chunks.append(Chunk(samples, region, slab, slab_geometry))
    return tuple(chunks)


def _parts(total: int, most: int) -> list[slice]:
    """``range(total)`` in parts of ``most``, unless the last would hold under half of that: then
    in as many parts, as equal as can be. A last part of a few positions costs a whole chunk's
    overhead; full parts keep the sizes that the rows before were timed with.

    >>> [(part.start, part.stop) for part in _parts(28, 10)]
    [(0, 10), (10, 20), (20, 28)]
    >>> [part.stop - part.start for part in _parts(4096, 1365)]
    [1024, 1024, 1024, 1024]
    """
    most = max(1, most)
    count = -(-total // most)
    if 2 * (total - (count - 1) * most) >= most:
        return [slice(start, min(start + most, total)) for start in range(0, total, most)]
    return [slice(total * index // count, total * (index + 1) // count) for index in range(count)]


def _split_one_sample(
    output: tuple[int, ...], cost: Callable[[tuple[int, ...]], int], budget: int
) -> list[tuple[slice, ...]]:
    """Boxes of one sample's output positions: single indices along the dimensions before ``axis``,
    ranges along ``axis``, the first dimension whose lines (all later dimensions whole) fit.

    ``cost(counts)``: the bytes of a box of ``counts`` outputs per dimension.
    """
    ndim = len(output)

    def box(axis: int, count: int) -> tuple[int, ...]:
        return (*(1,) * axis, count, *output[axis + 1 :])

    axis = next(axis for axis in range(ndim) if axis == ndim - 1 or cost(box(axis, 1)) <= budget)
    # the most outputs along ``axis`` that fit: the cost is linear in them
    first = cost(box(axis, 1))
    most = max(1, 1 + (budget - first) // max(1, cost(box(axis, 2)) - first))
    ranges = _parts(output[axis], most)
    rest = tuple(slice(0, size) for size in output[axis + 1 :])
    leading = itertools.product(*(range(size) for size in output[:axis]))
    return [
        (*(slice(index, index + 1) for index in indices), part, *rest)
        for indices in leading
        for part in ranges
    ]
