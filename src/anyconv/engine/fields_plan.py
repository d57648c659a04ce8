"""The fields path's plan: chunks sized for copied fields, and for the shifted views of its backward.

The fields' chunks hold the budget, counting each output position's field, filters and working
memory. The views' chunks hold ``VIEWS_BUDGET_FACTOR`` times it, counting each position of the
padded slab they read (the kernel's halo included) and the variant's working memory per output
position.
"""

from __future__ import annotations

import torch

from ..geometry import Geometry
from ..variants import Variant
from .backward_choice import Backward, choose_backward
from .chunks import plan_chunks
from .contraction import Plan
from .shifted_views import shifted_views_fit

#: the views' chunks may hold this many times the budget: their products take the slab in place,
#: one per kernel tap, and run slower on thinner slabs (measured: docs/benchmarks.md)
VIEWS_BUDGET_FACTOR = 2


def fields_plan(
    input: torch.Tensor,
    weight: torch.Tensor,
    variant: Variant,
    geometry: Geometry,
    groups: int,
    budget: int,
) -> Plan:
    """The engine Function's plan for a batched ``input`` (real or meta tensors: shapes are read).

    ``geometry`` has its zero padding still to apply; the variant's options are split into
    tensors (passed to the Function) and numbers (kept in the plan).

    >>> import torch
    >>> from anyconv.geometry import make_geometry
    >>> from anyconv.variants import Dot
    >>> meta = {"device": "meta", "dtype": torch.float64}
    >>> x, w = torch.empty(2, 8, 32, 32, **meta), torch.empty(8, 8, 3, 3, **meta)
    >>> plan = fields_plan(x, w, Dot(), make_geometry((32, 32), 3, padding=1), 1, 2**18)
    >>> len(plan.chunks), len(plan.tap_chunks)
    (6, 1)
    """
    taps = weight[0].numel()
    filters_per_group = weight.shape[0] // groups
    working = groups * variant.working_elements(1, taps, filters_per_group)
    element = input.element_size()
    bytes_per_field = element * (groups * (taps + filters_per_group) + working)
    chunks = plan_chunks(geometry, input.shape[0], bytes_per_field, budget)
    tap_chunks = None
    if choose_backward(variant, (), shifted_views_fit(geometry, weight)) is Backward.VIEWS:
        # per position of the padded slab a chunk reads (the kernel's halo included): the slab,
        # its gradient and the pair scales laid out over it; per output position: the variant's
        # work (its pair scales among it)
        per_input = element * (2 * input.shape[1] + weight.shape[0])
        per_output = element * working
        tap_chunks = plan_chunks(
            geometry, input.shape[0], per_output, VIEWS_BUDGET_FACTOR * budget, bytes_per_input=per_input
        )
    options = variant.options
    tensors = tuple(name for name, value in options.items() if isinstance(value, torch.Tensor))
    fixed = tuple((name, value) for name, value in options.items() if name not in tensors)
    return Plan(
        geometry, groups, chunks, variant, tensors, fixed, torch.is_grad_enabled(), tap_chunks, budget=budget
    )
