"""The fields path's plan: chunks sized for copied fields, and for the shifted views of its backward.

Both chunkings hold the budget: the fields' chunks count each output position's field, filters
and working memory; the views' chunks count each position of the padded slab they read.
"""

from __future__ import annotations

import torch

from ..geometry import Geometry
from ..variants import Variant
from .backward_choice import Backward, choose_backward
from .chunks import plan_chunks
from .contraction import Plan
from .shifted_views import shifted_views_fit


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
    >>> x, w = torch.empty(2, 8, 32, 32, device="meta"), torch.empty(8, 8, 3, 3, device="meta")
    >>> plan = fields_plan(x, w, Dot(), make_geometry((32, 32), 3, padding=1), 1, 2**18)
    >>> len(plan.chunks), len(plan.tap_chunks)
    (4, 1)
    """
    taps = weight[0].numel()
    filters_per_group = weight.shape[0] // groups
    working = groups * variant.working_elements(1, taps, filters_per_group)
    element = input.element_size()
    bytes_per_field = element * (groups * (taps + filters_per_group) + working)
    chunks = plan_chunks(geometry, input.shape[0], bytes_per_field, budget)
    tap_chunks = None
    if choose_backward(variant, (), shifted_views_fit(geometry, weight)) is Backward.VIEWS:
        # per position of the padded slab a chunk reads (the kernel's halo included): the slab
        # and its gradient, the pair scales laid out over it, the variant's work
        bytes_per_position = element * (2 * input.shape[1] + weight.shape[0] + working)
        tap_chunks = plan_chunks(geometry, input.shape[0], bytes_per_position, budget, per_input=True)
    options = variant.options
    tensors = tuple(name for name, value in options.items() if isinstance(value, torch.Tensor))
    fixed = tuple((name, value) for name, value in options.items() if name not in tensors)
    return Plan(geometry, groups, chunks, variant, tensors, fixed, torch.is_grad_enabled(), tap_chunks)
