"""``convert``: swap the convolutions of a model for generalized ones, keeping every weight.

The new layers hold the very same weight and bias Parameters under the same names, so the
model's ``state_dict`` keys, an optimizer built on its parameters and a saved checkpoint all still fit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize

from ..engine.chunks import check_memory_budget
from ..errors import ArgumentError, wrong_type
from ..variants import Variant, resolve_variant
from .conv import Conv1d, Conv2d, Conv3d, ConvNd
from .generalized import (
    GeneralizedConv1d,
    GeneralizedConv2d,
    GeneralizedConv3d,
    GeneralizedConvNd,
)

Include = Callable[[str, torch.nn.Module], bool]

# A subclass is converted as the first of these in its MRO, if nothing before it computes.
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
# the methods through which a convolution module computes; a subclass defining one computes its own way
_COMPUTATION = ("forward", "_conv_forward")


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
    optimizer's references are kept). A parametrized weight or bias (``weight_norm``,
    ``spectral_norm``, any ``torch.nn.utils.parametrize`` chain) keeps its parametrizations over
    the same original Parameters, and a pruned one (``torch.nn.utils.prune``) or one normalised by
    the older ``torch.nn.utils.weight_norm`` its Parameters (``_orig`` and ``_mask``, ``_g`` and
    ``_v``) and the forward pre-hook that recomputes it from them. The swap is in place and the
    module is returned; if ``module`` is itself a convolution, the returned layer is its
    replacement.

    ``include(name, layer)`` chooses the layers: ``name`` is the qualified name ("" for the top
    module), the layer is converted when it returns True (default: every convolution). A layer
    shared under several names is converted once and stays shared; ``include`` sees its first name.
    Tensor-valued ``variant_options`` are copied for each layer onto its device and dtype, so each
    layer learns its own. ``memory_budget`` (bytes per call) defaults to the layer's own, if any.

    A subclass that computes as its base class does (no ``forward`` or ``_conv_forward`` of its own or
    of any class between it and the base) is converted as the base, keeping what it adds (parameters,
    buffers, submodules) under the same names; its class and plain attributes are not kept. A subclass
    with its own computation (padding or weight standardisation in its forward, say) is refused rather
    than silently replaced: :func:`anyconv.intercept` computes such layers with a variant. So are a
    lazy convolution whose shape is not known yet (run one forward first) and a TorchScript module
    holding convolutions (convert before scripting it). ``include`` is asked first: a layer it leaves
    out is never refused.

    Left alone: transposed convolutions (a variant meets receptive fields of the input; a
    transposed convolution has none, it scatters each input value over the output), layers that
    are generalized already, and, when ``include`` rejects them, everything else. The hooks of a
    replaced layer (forward, backward, state_dict ones) go with it: the same hook dicts, so that a
    handle taken before the conversion still removes its hook.

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
    check_memory_budget(memory_budget)
    # fail before touching the model if the variant or its options are wrong
    resolve_variant(variant, **variant_options)
    chosen = include if include is not None else _every_layer

    def swap(layer: torch.nn.Module, name: str) -> torch.nn.Module | None:
        if _scripted_convolutions(layer) and chosen(name, layer):
            where = f"layer {name!r}" if name else "the module"
            raise ArgumentError(
                f"{where} is a TorchScript module (torch.jit.script or trace) holding convolutions, "
                "whose compiled code calls torch's own: convert the Python module before scripting "
                "it, or leave it out with include="
            )
        if not _is_candidate(layer) or not chosen(name, layer):
            return None
        base = _convertible_base(layer, name)
        return _generalized_copy(layer, base, variant, memory_budget, variant_options)

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


def _scripted_convolutions(layer: torch.nn.Module) -> bool:
    """Whether ``layer`` is a TorchScript module with a convolution in it: its compiled code calls
    torch's convolutions whatever its Python attributes are, so swapping them would change
    nothing."""
    return isinstance(layer, torch.jit.ScriptModule) and any(
        "Conv" in getattr(module, "original_name", "") for module in layer.modules()
    )


def _plan_swaps(
    parent: torch.nn.Module,
    prefix: str,
    swap: Callable[[torch.nn.Module, str], torch.nn.Module | None],
    done: dict[int, torch.nn.Module | None],
    swaps: list[tuple[torch.nn.Module, str, torch.nn.Module]],
) -> None:
    """Walk the tree depth first; ``done`` maps a visited layer's id to its replacement, if any."""
    # every name of every child: named_children() yields a child held under two names of one
    # parent once, which would leave its second name holding the unconverted layer
    for child_name, child in parent._modules.items():
        if child is None:
            continue
        name = f"{prefix}{child_name}"
        if id(child) not in done:
            done[id(child)] = swap(child, name)
            # nothing inside a TorchScript module can be swapped (its compiled code stays)
            if done[id(child)] is None and not isinstance(child, torch.jit.ScriptModule):
                _plan_swaps(child, f"{name}.", swap, done, swaps)
        if done[id(child)] is not None:
            swaps.append((parent, child_name, cast(torch.nn.Module, done[id(child)])))


def _is_candidate(layer: torch.nn.Module) -> bool:
    return isinstance(layer, _ConvNd) and not layer.transposed and not isinstance(layer, _GENERALIZED)


def _convertible_base(layer: torch.nn.Module, name: str) -> type:
    """The convolution class ``layer`` computes as, or a clear refusal naming the layer."""
    where = f"layer {name!r}" if name else "the module"
    if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
        raise ArgumentError(
            f"{where} is a {type(layer).__name__} whose shape is not known yet: run one forward "
            "pass before convert, or leave it out with include="
        )
    # the first class that is a known convolution or computes itself (torch.nn.Module at the latest)
    owner = next(cls for cls in type(layer).__mro__ if cls in _GENERALIZED_OF or _computing(cls))
    if owner in _GENERALIZED_OF:
        return owner
    raise ArgumentError(
        f"{where} is a {type(layer).__name__}, whose class {owner.__name__} computes in its own way "
        f"({', '.join(_computing(owner))}), which convert would drop: run the model inside "
        "anyconv.intercept(variant) or wrap it in anyconv.nn.Intercepted(model, variant), which "
        "compute torch's convolutions after the layer's own work, or leave it out with include="
    )


def _computing(cls: type) -> list[str]:
    return [method for method in _COMPUTATION if method in vars(cls)]


def _generalized_copy(
    layer: torch.nn.Module,
    base: type,
    variant: str | Variant | type[Variant],
    memory_budget: int | None,
    variant_options: dict[str, Any],
) -> torch.nn.Module:
    """The generalized twin of ``layer``, built on the meta device, then given its Parameters."""
    weight = cast(torch.Tensor, layer.weight)  # computed where parametrized or pruned: its dtype and device
    options = {
        option: value.detach().to(device=weight.device, dtype=weight.dtype, copy=True)
        if isinstance(value, torch.Tensor)
        else value
        for option, value in variant_options.items()
    }
    twin = _GENERALIZED_OF[base](
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
    # what a subclass adds (a buffer, a parameter, a submodule) stays, so state_dict keys are kept;
    # so does what pruning adds (``weight_orig``, ``weight_mask``)
    for parameter_name, parameter in layer._parameters.items():
        if parameter_name not in ("weight", "bias"):
            twin.register_parameter(parameter_name, parameter)
    for buffer_name, buffer in layer._buffers.items():
        persistent = buffer_name not in layer._non_persistent_buffers_set
        twin.register_buffer(buffer_name, buffer, persistent=persistent)
    for child_name, child in layer._modules.items():
        if child_name != "parametrizations" or not parametrize.is_parametrized(layer):
            twin.add_module(child_name, child)
    for name in ("weight", "bias"):
        _carry(layer, twin, name)
    _share_hooks(layer, twin)
    twin.train(layer.training)
    return twin


def _share_hooks(layer: torch.nn.Module, twin: torch.nn.Module) -> None:
    """Give ``twin`` the ``layer``'s hooks, every kind (forward, pre-forward, backward, state_dict
    and load_state_dict hooks, with their flags): the same dicts, so that a handle taken on the
    layer removes its hook from the twin too. Among them are the pre-hooks that recompute a pruned
    weight (``torch.nn.utils.prune``) or a weight-normalised one (the older
    ``torch.nn.utils.weight_norm``) from the carried Parameters before each forward."""
    for attribute in _HOOK_ATTRIBUTES:
        if attribute in vars(layer):
            object.__setattr__(twin, attribute, vars(layer)[attribute])


#: the attributes in which torch.nn.Module keeps its hooks and their flags
_HOOK_ATTRIBUTES = tuple(name for name in vars(torch.nn.Module()) if "hook" in name)


def _carry(layer: torch.nn.Module, twin: torch.nn.Module, name: str) -> None:
    """Give ``twin`` the ``layer``'s tensor ``name`` as the layer holds it: its Parameter (or None),
    the same parametrizations over the same original Parameters (weight_norm, spectral_norm,
    orthogonal...), or a pruned tensor with the pruning's forward pre-hook that recomputes it."""
    if parametrize.is_parametrized(layer, name):
        chain = cast(parametrize.ParametrizationList, cast(torch.nn.ModuleDict, layer.parametrizations)[name])
        # registering runs each right_inverse on a stand-in; the layer's own originals (the
        # objects an optimizer and a state_dict refer to) then take the stand-ins' places
        setattr(twin, name, torch.nn.Parameter(getattr(layer, name).detach()))
        for parametrization in chain:
            parametrize.register_parametrization(twin, name, parametrization, unsafe=True)
        twin_chain = cast(torch.nn.ModuleDict, twin.parametrizations)[name]
        for original_name, original in chain.named_parameters(recurse=False):
            setattr(twin_chain, original_name, original)
        return
    if name in layer._parameters:
        setattr(twin, name, layer._parameters[name])
        return
    # pruned (torch.nn.utils.prune) or weight-normalised by the older torch.nn.utils.weight_norm:
    # the tensor is a plain attribute that a forward pre-hook (shared by _share_hooks) recomputes
    # from Parameters carried above (``name + "_orig"`` and ``name + "_mask"``, or ``name + "_g"``
    # and ``name + "_v"``)
    del twin._parameters[name]
    setattr(twin, name, getattr(layer, name))
