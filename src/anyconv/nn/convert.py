"""``convert``: swap the convolutions of a model for generalized ones, keeping every weight.

The new layers hold the very same weight and bias Parameters under the same names, so the
model's ``state_dict`` keys, an optimizer built on its parameters and a saved checkpoint all still fit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.lazy import LazyModuleMixin

from ..errors import ArgumentError, invalid, wrong_type
from ..variants import Variant, resolve_variant
from .conv import Conv1d, Conv2d, Conv3d, ConvNd
from .generalized import (
    GeneralizedConv1d,
    GeneralizedConv2d,
    GeneralizedConv3d,
    GeneralizedConvNd,
)

Include = Callable[[str, torch.nn.Module], bool]

# Exact classes only: a subclass may override the computation, which the swap would silently drop.
_GENERALIZED_OF: dict[type, type] = {
    torch.nn.Conv1d: GeneralizedConv1d,
    torch.nn.Conv2d: GeneralizedConv2d,
    torch.nn.Conv3d: GeneralizedConv3d,
    Conv1d: GeneralizedConv1d,
    Conv2d: GeneralizedConv2d,
    Conv3d: GeneralizedConv3d,
    ConvNd: GeneralizedConvNd,
}
_GENERALIZED = (GeneralizedConv1d, GeneralizedConv2d, GeneralizedConv3d, GeneralizedConvNd)


def convert(
    module: torch.nn.Module,
    variant: str | Variant | type[Variant],
    *,
    include: Include | None = None,
    memory_budget: int | None = None,
    **variant_options: Any,
) -> torch.nn.Module:
    """Replace the convolutions inside ``module`` by generalized ones computing with ``variant``.

    Every ``torch.nn.Conv1d/2d/3d`` and ``anyconv.nn.Conv1d/2d/3d/Nd`` becomes the matching
    ``GeneralizedConv1d/2d/3d/Nd`` with the same constructor arguments, holding the same weight
    and bias Parameter objects (so device, dtype, ``requires_grad``, ``state_dict`` keys and an
    optimizer's references are kept). The swap is in place and the module is returned; if
    ``module`` is itself a convolution, the returned layer is its replacement.

    ``include(name, layer)`` chooses the layers: ``name`` is the qualified name ("" for the top
    module), the layer is converted when it returns True (default: every convolution). A layer
    shared under several names is converted once and stays shared; ``include`` sees its first name.
    Tensor-valued ``variant_options`` are copied for each layer onto its device and dtype, so each
    layer learns its own. ``memory_budget`` (bytes per call) defaults to the layer's own, if any.

    Left alone: transposed convolutions (a variant meets receptive fields of the input; a
    transposed convolution has none, it scatters each input value over the output), layers that
    are generalized already, and, when ``include`` rejects them, everything else. A subclass of a
    torch convolution with its own computation is refused rather than silently replaced, and so is
    a lazy convolution whose shape is not known yet (run one forward first). Hooks registered on a
    replaced layer stay on the old object.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    >>> keys, first_weight = list(model.state_dict()), model[0].weight
    >>> model = convert(model, "dot", include=lambda name, layer: name != "2")
    >>> type(model[0]).__name__, type(model[2]).__name__
    ('GeneralizedConv2d', 'Conv2d')
    >>> model[0].weight is first_weight and list(model.state_dict()) == keys
    True
    """
    if not isinstance(module, torch.nn.Module):
        raise wrong_type("module", module, "a torch.nn.Module")
    if include is not None and not callable(include):
        raise wrong_type("include", include, "a function (name, layer) -> bool, or None")
    if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, int)):
        raise wrong_type("memory_budget", memory_budget, "a positive number of bytes (int) or None")
    if memory_budget is not None and memory_budget < 1:
        raise invalid("memory_budget", memory_budget, "a positive number of bytes")
    # fail before touching the model if the variant or its options are wrong
    resolve_variant(variant, **variant_options)
    chosen = include if include is not None else _every_layer

    def swap(layer: torch.nn.Module, name: str) -> torch.nn.Module | None:
        if not _is_convertible(layer, name) or not chosen(name, layer):
            return None
        return _generalized_copy(layer, variant, memory_budget, variant_options)

    top = swap(module, "")
    if top is not None:
        return top
    # plan every swap first, so a refused layer leaves the model as it was
    swaps: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    _plan_swaps(module, "", swap, {}, swaps)
    for parent, child_name, replacement in swaps:
        setattr(parent, child_name, replacement)
    return module


def _every_layer(name: str, layer: torch.nn.Module) -> bool:
    return True


def _plan_swaps(
    parent: torch.nn.Module,
    prefix: str,
    swap: Callable[[torch.nn.Module, str], torch.nn.Module | None],
    done: dict[int, torch.nn.Module | None],
    swaps: list[tuple[torch.nn.Module, str, torch.nn.Module]],
) -> None:
    """Walk the tree depth first; ``done`` maps a visited layer's id to its replacement, if any."""
    for child_name, child in parent.named_children():
        name = f"{prefix}{child_name}"
        if id(child) not in done:
            done[id(child)] = swap(child, name)
            if done[id(child)] is None:
                _plan_swaps(child, f"{name}.", swap, done, swaps)
        if done[id(child)] is not None:
            swaps.append((parent, child_name, done[id(child)]))


def _is_convertible(layer: torch.nn.Module, name: str) -> bool:
    if not isinstance(layer, _ConvNd) or layer.transposed or isinstance(layer, _GENERALIZED):
        return False
    where = f"layer {name!r}" if name else "the module"
    if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
        raise ArgumentError(
            f"{where} is a {type(layer).__name__} whose shape is not known yet: run one forward "
            "pass before convert, or leave it out with include="
        )
    if type(layer) not in _GENERALIZED_OF:
        raise ArgumentError(
            f"{where} is a {type(layer).__name__}, a subclass of a convolution that may compute "
            "in its own way, which convert would drop: leave it out with include= "
            "(convert handles torch.nn.Conv1d/2d/3d and anyconv.nn.Conv1d/2d/3d/Nd)"
        )
    return True


def _generalized_copy(
    layer: torch.nn.Module,
    variant: str | Variant | type[Variant],
    memory_budget: int | None,
    variant_options: dict[str, Any],
) -> torch.nn.Module:
    """The generalized twin of ``layer``, built on the meta device, then given its Parameters."""
    weight = layer.weight
    options = {
        option: value.detach().to(device=weight.device, dtype=weight.dtype, copy=True)
        if isinstance(value, torch.Tensor)
        else value
        for option, value in variant_options.items()
    }
    twin = _GENERALIZED_OF[type(layer)](
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
        device="meta",
        dtype=weight.dtype,
        variant=variant,
        memory_budget=memory_budget if memory_budget is not None else getattr(layer, "memory_budget", None),
        **options,
    )
    twin.weight = weight
    twin.bias = layer.bias
    twin.train(layer.training)
    return twin
