# ruff: noqa: E501  (one case per line: the table reads as a table)
"""The native loops in bfloat16 and float16: accumulated in float32 and rounded once, like torch's conv.

Forward and gradients against the float64 formulas (tests/variant_reference.py), within a few
times the error torch's own convolution makes at that dtype, on both loop families (the fused
loops of the fields path and the tap loops of depthwise layers); NaN and inf land where the
float64 formulas put them.
"""

import pytest
import torch
import torch.nn.functional as F
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine import tap_loops
from anyconv.variants import fused
from anyconv.variants.registry import resolve_variant

LOW = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]
VARIANTS = [
    pytest.param("l1", {}, id="l1"),
    pytest.param("l1", {"adder_grad": True}, id="l1-adder"),
    pytest.param("lp", {"p": 3.0}, id="lp-3"),
    pytest.param("lp", {"p": 0.7}, id="lp-0.7"),
    pytest.param("max_plus", {}, id="max_plus"),
    pytest.param("min_plus", {}, id="min_plus"),
]
#: the variants the tap loops compute (lp takes the fused loops on every layer)
TAP_LOOP_VARIANTS = ("l1", "max_plus", "min_plus")
#: lp's whole exponents, whose sums the tap loops take too (any other p only on depthwise layers)
TAP_LOOP_POWERS = (1.0, 2.0, 3.0, 4.0)
#: the fused loops (dense with fewer filters than a block, grouped) and the tap loops
#: (depthwise; dense in filter blocks)
LAYERS = [
    {"id": "dense", "x": (2, 6, 9, 8), "w": (5, 6, 3, 3), "with": {"padding": 1}, "taps": True},
    {"id": "dense-3-filters", "x": (2, 6, 9, 8), "w": (3, 6, 3, 3), "with": {"padding": 1}, "taps": False},
    # more channels per group than any variant's loops take (tap_loops.MAX_DISTANCE_CHANNELS_PER_GROUP)
    {"id": "grouped-strided", "x": (1, 64, 11, 10), "w": (6, 32, 3, 2), "with": {"stride": 2, "groups": 2}, "taps": False},
    {"id": "depthwise", "x": (2, 4, 21, 37), "w": (4, 1, 3, 3), "with": {"padding": 1, "groups": 4}, "taps": True},
    {"id": "depthwise-5x5-s2", "x": (1, 3, 23, 40), "w": (6, 1, 5, 5), "with": {"padding": 2, "stride": 2, "groups": 3}, "taps": True},
]  # fmt: skip


def _inputs(variant, case, dtype):
    """Inputs exact in ``dtype``. The tropical ones have no ties: integers in the input, distinct
    fractions below 1/2 in each filter, so that one tap wins each output in every precision
    (the float64 formula's amax splits a tie's gradient, the loops give it to the first tap)."""
    generator = torch.Generator().manual_seed(0)
    if variant in ("max_plus", "min_plus"):
        count = torch.Size(case["x"]).numel()
        input = (torch.randperm(count, generator=generator) % 200 - 100).reshape(case["x"])
        out_channels, *tap_shape = case["w"]
        taps = torch.Size(tap_shape).numel()
        fractions = torch.stack([torch.randperm(taps, generator=generator) for _ in range(out_channels)])
        weight = (fractions / (2 * taps)).reshape(case["w"])
        return input.to(dtype), weight.to(dtype)
    return (
        torch.randn(case["x"], generator=generator).to(dtype),
        torch.randn(case["w"], generator=generator).to(dtype),
    )


def _relative_error(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def _torch_conv_error(input, weight, dtype, grad, case):
    """The largest relative error of torch's own convolution in ``dtype``, forward and gradients."""
    wide = [t.double().requires_grad_() for t in (input, weight)]
    narrow = [t.detach().to(dtype).requires_grad_() for t in wide]
    errors = []
    outputs = [F.conv2d(*pair, **case["with"]) for pair in (wide, narrow)]
    errors.append(_relative_error(outputs[1], outputs[0]))
    grads = [torch.autograd.grad(out, pair, grad.to(out.dtype)) for out, pair in zip(outputs, (wide, narrow))]
    errors += [_relative_error(mine, reference) for mine, reference in zip(grads[1], grads[0])]
    return max(errors)


def _adder_reference(input, weight, output_grad, case):
    """AdderNet's gradients from their formulas: the filters' p - w, the fields' clip(w - p, -1, 1)."""
    columns = anyconv.unfold(
        input, weight.shape[2:], padding=case["with"].get("padding", 0), stride=case["with"].get("stride", 1)
    )
    groups = case["with"].get("groups", 1)
    batch, out_channels = input.shape[0], weight.shape[0]
    fields = (
        columns.transpose(1, 2).reshape(batch, -1, groups, weight[0].numel()).transpose(1, 2)
    )  # (B, G, L, K)
    filters = weight.reshape(groups, out_channels // groups, -1)  # (G, O, K)
    grad = output_grad.reshape(batch, groups, out_channels // groups, -1).transpose(2, 3)  # (B, G, L, O)
    difference = fields[:, :, :, None, :] - filters[None, :, None]  # (B, G, L, O, K)
    grad_weight = (grad[..., None] * difference).sum((0, 2)).reshape(weight.shape)
    grad_columns = (grad[..., None] * (-difference).clamp(-1, 1)).sum(3)  # (B, G, L, K)
    grad_columns = grad_columns.transpose(1, 2).reshape(batch, -1, columns.shape[1]).transpose(1, 2)
    geometry = {key: value for key, value in case["with"].items() if key in ("padding", "stride")}
    grad_input = anyconv.fold(grad_columns, input.shape[2:], weight.shape[2:], **geometry)
    return grad_input, grad_weight


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("variant, options", VARIANTS)
@pytest.mark.parametrize("case", LAYERS, ids=lambda case: case["id"])
def test_low_precision_loops_match_the_float64_formulas(case, variant, options, dtype):
    input, weight = _inputs(variant, case, dtype)
    input.requires_grad_()
    weight.requires_grad_()
    fits = tap_loops.tap_loops_fit(
        resolve_variant(variant, **options), input, weight, case["with"].get("groups", 1)
    )
    float16_built = hasattr(fused.load_library("fused_kernels.cpp"), "l1_forward_f16")
    if not fused.native_kernels_available() or (dtype == torch.float16 and not float16_built):
        pytest.skip("no native loops (or none in float16) with this compiler")
    # lp with another p: only where the loops sum every tap of a few channels (the depthwise cases)
    loops_take = variant in TAP_LOOP_VARIANTS or (
        variant == "lp" and (options["p"] in TAP_LOOP_POWERS or case["id"].startswith("depthwise"))
    )
    assert fits == (case["taps"] and loops_take)
    output = anyconv.generalized_conv(input, weight, variant, **case["with"], **options)
    assert output.dtype == dtype
    assert fused.last_path() == "native"
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(output, (input, weight), grad)
    assert all(g.dtype == dtype for g in grads)

    wide = [t.detach().double().requires_grad_() for t in (input, weight)]
    reference = naive_generalized_conv(*wide, variant, **case["with"], **options)
    if options.get("adder_grad"):
        expected = _adder_reference(*wide, grad.double(), case)
    else:
        expected = torch.autograd.grad(reference, wide, grad.double())
    # torch's convolution in this dtype on data of this kind, and at least the dtype's rounding
    bound = max(4 * _torch_conv_error(*wide, dtype, grad, case), 4 * torch.finfo(dtype).eps)
    assert _relative_error(output, reference) <= bound
    for got, want in zip(grads, expected):
        # lp with p < 1 where a field meets its filter exactly: the formula's slope is 0 * inf,
        # the loops take 0 (see power_sums_backward)
        defined = want.isfinite()
        assert _relative_error(got[defined], want[defined]) <= bound


def _poison(tensor, generator, count):
    """NaN, +inf and -inf at random positions of ``tensor`` (in place), ``count`` of each."""
    flat = tensor.view(-1)
    positions = torch.randperm(flat.numel(), generator=generator)[: 3 * count]
    for values, value in zip(positions.split(count), (float("nan"), float("inf"), float("-inf"))):
        flat[values] = value


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("variant, options", VARIANTS)
@pytest.mark.parametrize("case", LAYERS, ids=lambda case: case["id"])
def test_nan_and_inf_land_where_the_float64_formula_puts_them(case, variant, options, dtype):
    generator = torch.Generator().manual_seed(2)
    input = torch.randn(case["x"], generator=generator).to(dtype)
    weight = torch.randn(case["w"], generator=generator).to(dtype)
    _poison(input, generator, 2)
    _poison(weight, generator, 1)
    output = anyconv.generalized_conv(input, weight, variant, **case["with"], **options)
    reference = naive_generalized_conv(input.double(), weight.double(), variant, **case["with"], **options)
    assert reference.isnan().any() and reference.isinf().any()
    assert torch.equal(output.isnan(), reference.isnan())
    assert torch.equal(output == float("inf"), reference == float("inf"))
    assert torch.equal(output == float("-inf"), reference == float("-inf"))


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("case", LAYERS, ids=lambda case: case["id"])
def test_autocast_runs_the_native_loops(case, dtype):
    input, weight = torch.randn(case["x"]), torch.randn(case["w"])
    with torch.autocast("cpu", dtype=dtype):
        output = anyconv.generalized_conv(input, weight, "l1", **case["with"])
    assert output.dtype == dtype
    float16_built = hasattr(fused.load_library("fused_kernels.cpp"), "l1_forward_f16")
    if fused.native_kernels_available() and (dtype == torch.bfloat16 or float16_built):
        assert fused.last_path() == "native"
    reference = naive_generalized_conv(
        input.to(dtype).double(), weight.to(dtype).double(), "l1", **case["with"]
    )
    assert _relative_error(output, reference) <= 4 * torch.finfo(dtype).eps
