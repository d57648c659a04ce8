"""``intercept`` and ``Intercepted``: every convolution a model computes, run by anyconv with a variant.

A ``TorchFunctionMode`` catches torch's functional convolutions (``F.conv1d/2d/3d``, ``torch.conv*``,
``torch.convolution``) wherever a layer calls them, after the layer's own padding or weight changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from ..engine import conv_transpose, generalized_conv
from ..engine.chunks import check_memory_budget
from ..errors import invalid, wrong_type
from ..variants import Dot, Variant, resolve_variant


class _Call(NamedTuple):
    """One convolution call, whichever of torch's functions was asked, with every argument."""

    input: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: Any
    padding: Any
    dilation: Any
    groups: int
    transposed: bool
    output_padding: Any


def _plain(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> _Call:
    return _Call(input, weight, bias, stride, padding, dilation, groups, False, 0)


def _transposed(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
) -> _Call:
    return _Call(input, weight, bias, stride, padding, dilation, groups, True, output_padding)


def _general(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Any,
    padding: Any,
    dilation: Any,
    transposed: bool,
    output_padding: Any,
    groups: int,
) -> _Call:
    return _Call(input, weight, bias, stride, padding, dilation, groups, transposed, output_padding)


# each function: its number of spatial dimensions (None: any) and how its arguments bind
_CONVOLUTIONS: dict[Any, tuple[int | None, Callable[..., _Call]]] = {
    torch.conv1d: (1, _plain),
    torch.conv2d: (2, _plain),
    torch.conv3d: (3, _plain),
    torch.conv_transpose1d: (1, _transposed),
    torch.conv_transpose2d: (2, _transposed),
    torch.conv_transpose3d: (3, _transposed),
    torch.convolution: (None, _general),
}


class Interception(TorchFunctionMode):
    """While active, torch's convolutions are computed by anyconv with one variant and fixed options.

    Made by :func:`intercept`; enter it with ``with``. Transposed convolutions go to
    :func:`anyconv.conv_transpose` when the variant is the plain ``Dot``, and are left to torch
    otherwise (a variant meets receptive fields of the input, which a transposed convolution does
    not read). ``calls`` counts the convolutions it computed.
    """

    def __init__(self, variant: Variant, memory_budget: int | None) -> None:
        super().__init__()
        self.variant = variant
        self.memory_budget = memory_budget
        self.calls = 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        ndim, bind = _CONVOLUTIONS.get(func, (None, None))
        call = bind(*args, **kwargs) if bind is not None else None
        if (
            call is None
            or (ndim is not None and call.weight.dim() != ndim + 2)  # torch refuses it, in its words
            or (call.transposed and type(self.variant) is not Dot)
        ):
            return func(*args, **kwargs)
        self.calls += 1
        # no mode at all while anyconv computes: an outer interception must not take its calls
        with torch._C.DisableTorchFunction():
            if call.transposed:
                return conv_transpose(
                    call.input,
                    call.weight,
                    call.bias,
                    call.stride,
                    call.padding,
                    call.output_padding,
                    call.groups,
                    call.dilation,
                    memory_budget=self.memory_budget,
                )
            return generalized_conv(
                call.input,
                call.weight,
                self.variant,
                call.bias,
                call.stride,
                call.padding,
                call.dilation,
                call.groups,
                memory_budget=self.memory_budget,
            )


def intercept(
    variant: str | Variant | type[Variant],
    *,
    memory_budget: int | None = None,
    **variant_options: Any,
) -> Interception:
    """A context in which every convolution torch is asked for is computed by anyconv with ``variant``.

    Catches ``F.conv1d/2d/3d`` (the same functions as ``torch.conv1d/2d/3d``) and
    ``torch.convolution`` whoever calls them: ``torch.nn.ConvNd`` layers, subclasses with their own
    forward (timm's ``Conv2dSame`` pads first, ``StdConv2d`` standardises its weight first, and
    that work is kept), and plain functions. Every argument is kept, string padding included.
    The variant's options are fixed numbers (tensor options, learnable per layer, need
    :func:`convert`); layers converted already compute with their own options and are not touched.
    Transposed convolutions: see :class:`Interception`.

    >>> import torch, torch.nn.functional as F
    >>> x, w = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
    >>> with intercept("l1") as interception:
    ...     y = F.conv2d(x, w, padding="same")
    >>> interception.calls, torch.equal(y, generalized_conv(x, w, "l1", padding="same"))
    (1, True)
    """
    check_memory_budget(memory_budget)
    for option, value in variant_options.items():
        if isinstance(value, torch.Tensor):
            raise invalid(
                option,
                value,
                "a number: intercepted calls share fixed options (convert gives each layer its own tensor)",
            )
    return Interception(resolve_variant(variant, **variant_options), memory_budget)


class Intercepted(torch.nn.Module):
    """``module`` whose every convolution is computed by anyconv with ``variant`` (see :func:`intercept`).

    An ordinary module: its parameters are ``module``'s (``state_dict`` keys gain the prefix
    ``module.``), it trains, compiles and goes into DistributedDataParallel like any other.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.Tanh(), torch.nn.Conv1d(4, 1, 1))
    >>> wrapped = Intercepted(net, "dot")
    >>> torch.allclose(wrapped(torch.ones(1, 2, 5)), net(torch.ones(1, 2, 5)), atol=1e-6)
    True
    """

    def __init__(
        self,
        module: torch.nn.Module,
        variant: str | Variant | type[Variant],
        *,
        memory_budget: int | None = None,
        **variant_options: Any,
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise wrong_type("module", module, "a torch.nn.Module")
        super().__init__()
        self.module = module
        # checked once here; each forward enters a fresh mode, so calls in other threads stay apart
        self.variant = intercept(variant, memory_budget=memory_budget, **variant_options).variant
        self.memory_budget = memory_budget

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with Interception(self.variant, self.memory_budget):
            return self.module(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"
