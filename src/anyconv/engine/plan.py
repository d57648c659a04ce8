"""The plan of one convolution call: its arguments normalised once and the path that runs it, cached.

In the spirit of einops' recipes: a call signature is planned once, and every later call with it
only looks the plan up, prepares its input and runs the path the plan names (``paths.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..functional.transforms import transformed
from ..geometry import Geometry, make_geometry
from ..variants import Variant
from ..variants.native import native_enabled
from ..variants.triton_backend import backend
from .chunks import DEFAULT_MEMORY_BUDGET, resolve_budget
from .field_products import is_plain_product
from .fields import check_conv_sizes
from .machinery import machinery_watches
from .paths import choose_path

#: plans kept; the oldest is dropped past this (a model has a few dozen call signatures)
MAX_PLANS = 1024


@dataclass(frozen=True)
class ConvPlan:
    """Everything a call needs besides its tensors and variant; pure integers and names.

    >>> import torch
    >>> from anyconv.variants import Dot
    >>> plan = plan_conv(torch.randn(4, 8, 8), torch.randn(6, 4, 1, 1), Dot(), 1, 0, 1, 1, "zeros", None)
    >>> plan.path, plan.unbatched, plan.geometry.output_size
    ('pointwise', True, (8, 8))
    """

    #: the name of the path that computes the call (see ``paths.PATHS``)
    path: str
    #: the convolution the path computes, its zero padding still to apply
    geometry: Geometry
    #: a non-zero padding mode's padding, applied to the whole input before the path runs, or None
    padding: Geometry | None
    groups: int
    #: bytes per chunk, the floor applied
    budget: int
    #: whether the input came without its batch dimension (the path gets it with one)
    unbatched: bool


_PLANS: dict[tuple, ConvPlan] = {}


def plan_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    variant: Variant,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    padding_mode: Any,
    memory_budget: Any,
) -> ConvPlan:
    """The plan of a call whose tensors were checked (``check_conv_tensors``), made once per signature.

    The signature: the shapes, dtype and device, the arguments exactly as given, the variant's
    type and its numeric options (and which options are tensors), the grad mode, whether torch's
    machinery watches (``machinery_watches``: torch.func's transforms, autocast, modes, tensor
    subclasses) and whether a transform does (``transformed``: torch.func's, forward mode), and the
    environment's switches (``ANYCONV_NATIVE``,
    ``ANYCONV_BACKEND``). A call that torch.compile traces is planned in the trace (its
    arguments may be symbolic), as is one whose arguments cannot serve as a key.
    """
    arguments = (stride, padding, dilation, groups, padding_mode, memory_budget)
    if torch.compiler.is_compiling():
        return _make_plan(input, weight, variant, *arguments)
    options = variant.options
    try:
        key = (
            input.shape,
            weight.shape,
            input.dtype,
            input.device,
            _exact(stride),
            _exact(padding),
            _exact(dilation),
            groups,
            _exact(padding_mode),
            _exact(memory_budget),
            type(variant),
            tuple((name, value) for name, value in options.items() if not isinstance(value, torch.Tensor)),
            tuple(isinstance(value, torch.Tensor) for value in options.values()),
            torch.is_grad_enabled(),
            machinery_watches(input, weight),
            # under these the fields path alone sees the call through (``choose_path``)
            transformed(),
            native_enabled(),
            backend(),
        )
        plan = _PLANS.get(key)
    except TypeError:  # an argument or option that cannot be hashed, or compared exactly
        return _make_plan(input, weight, variant, *arguments)
    if plan is None:
        plan = _make_plan(input, weight, variant, *arguments)
        if len(_PLANS) >= MAX_PLANS:
            _PLANS.pop(next(iter(_PLANS)), None)
        _PLANS[key] = plan
    return plan


def clear_plans() -> None:
    """Forget every plan: for code that changes what a plan reads but not its key (tests that
    patch a path's ``fits``, or the budget's floor)."""
    _PLANS.clear()


def _exact(argument: Any) -> Any:
    """``argument`` as a key that tells apart values equal in Python but not as arguments (1,
    True and 1.0; a tuple and a list); TypeError for anything but ints, strings, None and
    tuples or lists of them."""
    kind = type(argument)
    if kind is int or kind is str or argument is None:
        return argument
    if kind is tuple or kind is list:
        return (kind, *(_exact(item) for item in argument))
    raise TypeError(f"no exact key for {kind.__name__}")


def _make_plan(
    input: torch.Tensor,
    weight: torch.Tensor,
    variant: Variant,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    padding_mode: Any,
    memory_budget: Any,
) -> ConvPlan:
    """Normalise the arguments, refuse sizes that cannot be made, and choose the path."""
    unbatched = input.dim() == weight.dim() - 1
    batched = input.unsqueeze(0) if unbatched else input
    geometry = make_geometry(batched.shape[2:], weight.shape[2:], stride, padding, dilation, padding_mode)
    budget = resolve_budget(memory_budget)
    check_conv_sizes(batched, weight, geometry, padding, dilation)
    padded_first = None
    if geometry.padding_mode != "zeros" and geometry.is_padded:
        # the engine zero-pads chunk by chunk; the other modes pad the whole input once, first
        padded_first = geometry
        geometry = make_geometry(
            geometry.padded_size, geometry.kernel_size, geometry.stride, 0, geometry.dilation
        )
    draft = ConvPlan("", geometry, padded_first, groups, budget, unbatched)
    path = choose_path(draft, variant, batched, weight)
    if memory_budget is None and path == "fields":
        budget = default_fields_budget(variant, weight, torch.is_grad_enabled())
    return ConvPlan(path, geometry, padded_first, groups, budget, unbatched)


def default_fields_budget(variant: Variant, weight: torch.Tensor, grad_mode: bool) -> int:
    """The fields path's bytes per chunk when the call gives no ``memory_budget``.

    Each chunk's product reads every filter once, so chunks holding fewer bytes of fields than
    the filters stream the filters more than the fields (dilated 3x3 d4, 512 x 4608 taps: 9 MiB).
    Without autograd a plain product's chunks hold at least the filters' bytes: the forward's peak
    stays under torch's own convolution's, which lays out the filters anew. Recorded for a
    backward, the default holds: larger chunks raised that row's peak past twice torch's
    (measurements in docs/benchmarks.md).

    >>> from anyconv.variants import Cosine, Dot
    >>> wide = torch.empty(512, 512, 3, 3, device="meta")
    >>> default_fields_budget(Dot(), wide, False) // 2**20, default_fields_budget(Dot(), wide, True) // 2**20
    (9, 4)
    >>> default_fields_budget(Cosine(), wide, False) == DEFAULT_MEMORY_BUDGET
    True
    """
    if grad_mode or not is_plain_product(variant):
        return DEFAULT_MEMORY_BUDGET
    return max(DEFAULT_MEMORY_BUDGET, weight.numel() * weight.element_size())
