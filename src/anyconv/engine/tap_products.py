"""The tap-products path: ``cosine``, ``sharpened_cosine``, ``polynomial`` and ``rbf`` on few
input channels per group (depthwise), and on the dense layers whose ``dot`` and ``l2`` the loops
take in filter blocks (in inference; the cosine also in an eager float call that records a graph),
composed from tap-by-tap sums instead of copied fields.

Each is a function of the dot product s = p . w summed tap by tap (``rbf``: of the squared distance,
which does not cancel on data far from zero), the field norms |p| (a box sum of x^2 per group) and
the filter norms |w|. The sums are the C++ tap loops' on CPU and the Triton kernels' where those are
chosen (:func:`tap_primitive`); both are custom operators differentiable twice, and autograd
differentiates the composition. On the C++ loops the cosines take one pass instead
(:func:`tap_quotient_conv`: p . w, |p|^2 and the division at once; on a dense layer in float or
double the filter blocks' p . w, then |p| once per field, then the division) where no graph is
recorded, and so does the cosine where one is, with a backward that recomputes from the input and
the weight, or reads a dense layer's kept quotient (``engine/tap_cosine.py``), unless torch's
machinery watches the call.
"""

from __future__ import annotations

from typing import Any

import torch

from ..geometry import Geometry
from ..variants import L2, RBF, Cosine, Dot, Polynomial, SharpenedCosine, Variant
from .machinery import machinery_watches, records_graph
from .ops_memory_format import output_memory_format
from .tap_cosine import composed_cosine, loops_cosine
from .tap_loops import filter_blocks_fit, tap_loops_conv, tap_quotient_conv, tap_sums_fit
from .tap_norms import Primitive, field_squares, safe_sqrt
from .triton_conv import triton_conv, triton_conv_fits

_DOT, _L2 = Dot(), L2()
_VARIANTS = (Cosine, SharpenedCosine, Polynomial, RBF)
#: whether calls that record no graph take the cosines in one pass of the loops (dot, |p|^2 and the
#: division together) rather than composed from the loops' dot, a box sum of x^2 and the division
#: (set it to False to time the composition against the one pass)
FUSED_QUOTIENT = True


def tap_products_fit(variant: Variant, input: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    """Whether this path computes the call: a product-form variant (exactly one of the built-in
    classes, whose formulas it repeats) where a primitive sums ``dot`` tap by tap (:func:`tap_primitive`),
    or where the loops take a dense layer's ``dot`` and ``l2`` in filter blocks (``filter_blocks_fit``)
    with gradients off, or for the cosine in an eager float32 or float64 call.

    >>> import torch
    >>> x, w = torch.randn(1, 8, 5, 5), torch.randn(8, 1, 3, 3)
    >>> tap_products_fit(Cosine(), x, w, 8) == (tap_primitive(x, w, 8) is not None)
    True
    >>> tap_products_fit(Dot(), x, w, 8)
    False
    """
    if type(variant) not in _VARIANTS:
        return False
    if tap_primitive(input, weight, groups) is not None:
        return True
    if not filter_blocks_fit(input, weight, groups):
        return False
    # a dense layer in inference, or the cosine in an eager float call whose backward recomputes
    # (loops_cosine): elsewhere, recorded for autograd, the composition keeps its products, norms
    # and quotient, about three outputs more than the fields path's backward (ResNet-18's stem: a
    # peak of 2.4x torch's, docs/benchmarks.md)
    return not torch.is_grad_enabled() or (
        type(variant) is Cosine
        and input.dtype in (torch.float32, torch.float64)
        and not machinery_watches(input, weight)
    )


def tap_forward_fits(variant: Variant, input: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    """Whether the fields path takes its forward from this path (:func:`tap_products_forward`) and
    keeps its own backward: a call that records a graph (or could: grad mode on), which
    :func:`tap_products_fit` leaves to the fields path, of one of this path's variants whose
    options are numbers, on a dense layer whose filter blocks the loops take, and that torch's
    machinery does not watch (its calls take the custom operator, whose forward is the chunks').

    The backward reads the input, the weight and the output (the even polynomial: s + c), as after
    the chunks' forward; the forward copies no fields.

    >>> import torch
    >>> x, w = torch.randn(1, 8, 40, 40), torch.randn(16, 8, 3, 3)
    >>> tap_forward_fits(RBF(), x, w, 1) == (filter_blocks_fit(x, w, 1) and torch.is_grad_enabled())
    True
    >>> tap_forward_fits(Dot(), x, w, 1)
    False
    """
    return (
        type(variant) in _VARIANTS
        and torch.is_grad_enabled()
        and not any(isinstance(value, torch.Tensor) for value in variant.options.values())
        and filter_blocks_fit(input, weight, groups)
        and not machinery_watches(input, weight)
    )


def tap_products_forward(
    variant: Variant,
    geometry: Geometry,
    groups: int,
    memory_budget: int,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    keep: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output of a call of :func:`tap_forward_fits` with no graph recorded, in torch's layout for
    it, and with ``keep`` the values its backward reads (the even polynomial's s + c), else None.

    >>> import torch
    >>> from anyconv.geometry import make_geometry
    >>> x, w = torch.randn(1, 8, 40, 40), torch.randn(16, 8, 3, 3)
    >>> if tap_forward_fits(Polynomial(degree=2), x, w, 1):
    ...     geometry = make_geometry((40, 40), 3, padding=1)
    ...     y, s = tap_products_forward(Polynomial(degree=2), geometry, 1, 2**20, x, w, None, True)
    ...     assert torch.allclose(y, s.square()) and y.shape == (1, 16, 40, 40)
    """
    layout = output_memory_format(input, weight)
    with torch.no_grad():
        if not keep:
            output = tap_products_conv(input, weight, bias, variant, geometry, groups, memory_budget)
            return _not_a_view(output.contiguous(memory_format=layout)), None
        assert isinstance(variant, Polynomial), "of this path's variants only the even polynomial keeps"
        shifted = tap_loops_conv(input, weight, None, _DOT, geometry, groups, memory_budget)
        shifted = _not_a_view(shifted.add_(variant.options["c"]).contiguous(memory_format=layout))
        return add_bias(shifted.pow(variant.options["degree"]), bias, False), shifted


def _not_a_view(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s values in a tensor that is no view, sharing its storage: autograd refuses any
    in-place change of a view that a Function returns (a ``ReLU(inplace=True)`` after the layer)."""
    if not tensor._is_view():
        return tensor
    return tensor.new_empty(0).set_(
        tensor.untyped_storage(), tensor.storage_offset(), tensor.shape, tensor.stride()
    )


def tap_primitive(input: torch.Tensor, weight: torch.Tensor, groups: int) -> Primitive | None:
    """What sums this path's ``dot`` and ``l2`` tap by tap on the call: the Triton kernels where they
    are chosen (CUDA tensors, or ``ANYCONV_BACKEND=triton``: see ``triton_conv_fits``), else the C++
    tap loops where they sum every tap (``tap_sums_fit``), else None (the path does not fit).

    The two never fit the same call (the loops step aside for ``ANYCONV_BACKEND=triton`` and take
    CPU tensors only); the box sum of x^2 (one channel per group) fits wherever the call does.

    >>> import torch
    >>> tap_primitive(torch.randn(1, 8, 5, 5), torch.randn(8, 1, 3, 3), 8) in (tap_loops_conv, _triton, None)
    True
    >>> tap_primitive(torch.randn(1, 8, 5, 5), torch.randn(8, 8, 3, 3), 1) is None
    True
    """
    if triton_conv_fits(_DOT, input, weight, groups):
        return _triton
    if tap_sums_fit(input, weight, groups):
        return tap_loops_conv
    return None


def _triton(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    variant: Variant,
    geometry: Geometry,
    groups: int,
    memory_budget: int,
) -> torch.Tensor:
    """``triton_conv`` as a primitive: the kernels read the padded input in place, so need no budget."""
    return triton_conv(input, weight, bias, variant, geometry, groups)


def tap_products_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    variant: Variant,
    geometry: Geometry,
    groups: int,
    memory_budget: int,
) -> torch.Tensor:
    """The generalized convolution of a batched ``input`` by this path (see :func:`tap_products_fit`).

    ``geometry`` holds the zero padding still to apply; the options are the variant's, numbers or
    tensors with one value per output channel.

    >>> import torch
    >>> from anyconv.geometry import make_geometry
    >>> x, w = torch.randn(2, 4, 6, 6), torch.randn(4, 1, 3, 3)
    >>> if tap_products_fit(Cosine(), x, w, 4):
    ...     y = tap_products_conv(x, w, None, Cosine(), make_geometry((6, 6), 3, padding=1), 4, 2**20)
    ...     assert y.shape == (2, 4, 6, 6) and y.abs().max() <= 1
    """
    batch, out_channels, ndim = input.shape[0], weight.shape[0], geometry.ndim
    per_group = out_channels // groups
    # (batch, groups, filters per group, *output): a group's field norms broadcast over its filters
    grouped = (batch, groups, per_group, *geometry.output_size)
    options = {name: _per_filter(value, groups, ndim) for name, value in variant.options.items()}
    recording = records_graph(input, weight, bias, *options.values())
    summing = tap_primitive(input, weight, groups)
    # else the loops take a dense layer's dot in filter blocks only (many taps), with gradients off
    primitive = summing or tap_loops_conv
    loops = FUSED_QUOTIENT and summing is tap_loops_conv
    # there, in float and double, the loops' quotient takes the dot from the filter blocks and
    # divides it by |p| found once per field (quotient_of_sums in tap_loops.cpp); bfloat16 and
    # float16 would round the dot before the division, and compose
    blocked = FUSED_QUOTIENT and summing is None and input.dtype in (torch.float32, torch.float64)
    if (
        (loops or blocked)
        and recording
        and isinstance(variant, Cosine)
        and not machinery_watches(input, weight, bias)
    ):
        # a backward that keeps the input and the weight only (and a dense layer's quotient), where
        # the composition below keeps its products, squares, norms and denominator for autograd
        return loops_cosine(input, weight, bias, variant.eps, geometry, groups, memory_budget)
    if (loops or blocked) and not recording and isinstance(variant, (Cosine, SharpenedCosine)):
        return _fused_cosine(input, weight, bias, variant, geometry, groups, memory_budget)
    if isinstance(variant, Cosine):
        output = composed_cosine(
            primitive, input, weight, variant.eps, geometry, groups, memory_budget, recording
        )
    elif isinstance(variant, RBF):
        gamma = 1 / weight[0].numel() if options["gamma"] is None else options["gamma"]
        # the primitive's l2 is -sum (p - w)^2, summed tap by tap
        distances = primitive(input, weight, None, _L2, geometry, groups, memory_budget).view(grouped)
        # without a graph in place: one output-sized tensor, not three
        output = (distances * gamma).exp() if recording else distances.mul_(gamma).exp_()
    else:
        products = primitive(input, weight, None, _DOT, geometry, groups, memory_budget).view(grouped)
        if isinstance(variant, Polynomial):
            shifted = products + options["c"] if recording else products.add_(options["c"])
            output = shifted.pow(options["degree"]) if recording else shifted.pow_(options["degree"])
        else:
            squares = field_squares(primitive, input, geometry, groups, memory_budget)
            field_norms = safe_sqrt(squares).unsqueeze(2)
            filter_norms = torch.linalg.vector_norm(weight.flatten(1), dim=1).view(
                groups, per_group, *(1,) * ndim
            )
            output = _sharpened(products, field_norms, filter_norms, options["exponent"], options["q"])
    output = output.view(batch, out_channels, *geometry.output_size)
    return add_bias(output, bias, recording)


def add_bias(output: torch.Tensor, bias: torch.Tensor | None, recording: bool) -> torch.Tensor:
    """``output`` plus the bias of each output channel; in place when no graph is recorded.

    >>> import torch
    >>> add_bias(torch.zeros(1, 2, 3), torch.tensor([1.0, 2.0]), False)[0, :, 0]
    tensor([1., 2.])
    """
    if bias is None:
        return output
    bias = bias.view(-1, *(1,) * (output.dim() - 2))
    return output + bias if recording else output.add_(bias)


def _fused_cosine(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    variant: Cosine | SharpenedCosine,
    geometry: Geometry,
    groups: int,
    memory_budget: int,
) -> torch.Tensor:
    """The cosine, or the sharpened cosine, plus ``bias``, by one pass of the loops (no graph recorded).

    The loops divide by |p| scale + offset: |p| |w| + eps for the cosine, and for the sharpened
    cosine's (|p| + q)(|w| + q) its expansion |p| (|w| + q) + q (|w| + q); the sharpening
    sign(s) |s|^exponent then runs on the quotient s in place but for one copy. The cosine's bias
    goes on in the loops' store, the sharpened cosine's after the sharpening.
    """
    # the norms and options in the loops' compute type (float32 for bfloat16 and float16)
    compute = torch.promote_types(input.dtype, torch.float32)
    filter_norms = torch.linalg.vector_norm(weight.flatten(1), dim=1, dtype=compute)
    if isinstance(variant, Cosine):
        scale, offset = filter_norms, torch.full_like(filter_norms, variant.eps)
    else:
        q = variant.options["q"]
        q = q.to(compute) if isinstance(q, torch.Tensor) else q
        scale = filter_norms + q
        offset = scale * q
    if isinstance(variant, Cosine):
        return tap_quotient_conv(input, weight, scale, offset, geometry, groups, memory_budget, bias)
    quotient = tap_quotient_conv(input, weight, scale, offset, geometry, groups, memory_budget)
    exponent = variant.options["exponent"]
    if isinstance(exponent, torch.Tensor):
        exponent = exponent.view(-1, *(1,) * geometry.ndim)
    # exponent > 0, so |s|^exponent is 0 where s is: with the sign of s copied it is sign(s) |s|^exponent
    return add_bias(quotient.abs().pow_(exponent).copysign_(quotient), bias, False)


def _per_filter(value: Any, groups: int, ndim: int) -> Any:
    """An option as it broadcasts against (batch, groups, filters per group, *output)."""
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        return value.view(groups, -1, *(1,) * ndim)
    return value


def _sharpened(
    products: torch.Tensor,
    field_norms: torch.Tensor,
    filter_norms: torch.Tensor,
    exponent: float | torch.Tensor,
    q: float | torch.Tensor,
) -> torch.Tensor:
    """sign(s') |s'|^exponent with s' = s / ((|p| + q) (|w| + q)), as ``SharpenedCosine.contract``."""
    similarity = products / ((field_norms + q) * (filter_norms + q))
    magnitude = similarity.abs()
    if torch.is_grad_enabled():
        # |s'|^e has the derivatives inf * 0 (e < 1) and 0 * log 0 at s' = 0: the variant's rule
        # takes them as 0, and 1^e keeps autograd's terms finite there
        zero = magnitude == 0
        powered = torch.where(zero, 0, torch.where(zero, 1, magnitude).pow(exponent))
        return torch.sign(similarity) * powered
    return torch.sign(similarity) * magnitude.pow(exponent)
