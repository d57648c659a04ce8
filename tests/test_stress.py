"""Stress: every built-in variant on hostile numbers, native and eager paths, against the float64 formula.

Inputs carry NaN, inf, huge and tiny magnitudes and large offsets (0-255 images, pixels near
1000). The forward must put NaN and inf where the naive formula computed in float64 does, and its
finite values within a small multiple of that formula's own float32 (or float64) rounding;
gradients (float64) must match autograd through the formula where it is finite. The examples per
test come from ``ANYCONV_FUZZ_EXAMPLES`` (default 40 here); set it to thousands for a long run.
"""

import math
import os
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.variants import fused

EXAMPLES = int(os.environ.get("ANYCONV_FUZZ_EXAMPLES", "40"))
stress = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VARIANTS = sorted(anyconv.variants.BUILTIN_VARIANTS)
PATHS = [
    pytest.param(
        "1",
        id="native",
        marks=pytest.mark.skipif(not fused.native_kernels_available(), reason="no C++ compiler here"),
    ),
    pytest.param("0", id="eager"),
]
#: magnitudes and offsets of the data: tiny to huge, and far from zero
SCALES = [1e-6, 1e-3, 1.0, 30.0, 1e3, 1e6]
OFFSETS = [0.0, 1.0, -255.0, 128.0, 1000.0, -1e4]
SPECIALS = [float("nan"), float("inf"), float("-inf")]
#: (smallest scale, largest scale or offset) where half precision holds the data as normal
#: numbers and float16 its products and sums of squares (under 65504), as torch's convolution needs
HALF_SCALES = {torch.float16: (0.1, 1.0), torch.bfloat16: (1e-6, 1e6)}


@st.composite
def variant_options(draw, variant):
    """Options of ``variant`` drawn from the values users give (per-channel tensors in forward)."""
    if variant == "lp":
        return {"p": draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]))}
    if variant == "rbf":
        return {"gamma": draw(st.sampled_from([None, 1e-3, 0.1, 1.0]))}
    if variant == "polynomial":
        return {"degree": draw(st.integers(1, 3)), "c": draw(st.sampled_from([0.0, 1.0, -2.5]))}
    if variant == "sharpened_cosine":
        # exponents below 1 are ill conditioned at s = 0, for the formula in every precision
        return {
            "exponent": draw(st.sampled_from([1.0, 1.5, 2.0, 3.0])),
            "q": draw(st.sampled_from([1e-3, 0.1])),
        }
    if variant == "l1":
        return {"adder_grad": False}
    return {}


@st.composite
def cases(draw, specials=True):
    """A small 1-D or 2-D convolution with data of one scale and offset, maybe poisoned."""
    variant = draw(st.sampled_from(VARIANTS))
    ndim = draw(st.integers(1, 2))
    kernel = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    sizes = tuple(k + draw(st.integers(0, 3)) for k in kernel)
    groups = draw(st.integers(1, 2))
    in_channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 3))
    scale, offset = draw(st.sampled_from(SCALES)), draw(st.sampled_from(OFFSETS))
    # filters near the data (trained filters are) or near zero (initialised ones are)
    filter_offset = draw(st.sampled_from([offset, 0.0]))
    poison = draw(
        st.lists(
            st.tuples(st.sampled_from(["input", "weight"]), st.sampled_from(SPECIALS), st.integers(0, 999)),
            max_size=3 if specials else 0,
        )
    )
    return {
        "variant": variant,
        "options": draw(variant_options(variant)),
        "input": (draw(st.integers(1, 2)), in_channels, *sizes),
        "weight": (out_channels, in_channels // groups, *kernel),
        "groups": groups,
        "padding": draw(st.integers(0, 1)),
        "scale": scale,
        "offsets": (offset, filter_offset),
        "poison": poison,
        "seed": draw(st.integers(0, 2**31 - 1)),
    }  # fmt: skip


def _tensors(case, dtype):
    generator = torch.Generator().manual_seed(case["seed"])
    offset, filter_offset = case["offsets"]
    input = offset + case["scale"] * torch.randn(case["input"], generator=generator, dtype=torch.float64)
    weight = filter_offset + case["scale"] * torch.randn(
        case["weight"], generator=generator, dtype=torch.float64
    )
    for target, value, place in case["poison"]:
        flat = (input if target == "input" else weight).view(-1)
        flat[place % flat.numel()] = value
    # the data rounded to dtype once: the float64 reference sees the same numbers
    return input.to(dtype), weight.to(dtype)


def _call(case, input, weight, function=anyconv.generalized_conv):
    return function(
        input, weight, case["variant"], None, 1, case["padding"], 1, case["groups"], **case["options"]
    )


def _rounding_scale(case, input, weight):
    """Per output, the size of what the naive formula rounds: the error allowed is a few eps of it."""
    variant, options = case["variant"], case["options"]
    absolute = {**case, "options": {}}
    magnitude = input.abs(), weight.abs()
    taps = weight[0].numel()
    if variant in ("dot", "cosine", "max_plus"):
        return _call({**absolute, "variant": variant}, *magnitude, function=naive_generalized_conv).abs()
    if variant == "min_plus":
        return _call({**absolute, "variant": "max_plus"}, *magnitude, function=naive_generalized_conv).abs()
    if variant == "polynomial":
        products = _call({**absolute, "variant": "dot"}, *magnitude, function=naive_generalized_conv)
        degree, c = options["degree"], abs(options["c"])
        return degree * (products + c).pow(degree)
    if variant == "sharpened_cosine":
        exponent = options["exponent"]
        cosines = _call(
            {**absolute, "options": {"exponent": 1.0, "q": options["q"]}},
            *magnitude,
            function=naive_generalized_conv,
        )
        return exponent * cosines.abs().pow(exponent)
    output = _call(case, input, weight, function=naive_generalized_conv).abs()
    if variant == "rbf":
        # exp's condition number gamma * d = |log y|
        return output * (1 + output.log().abs())
    if variant == "lp":
        return output * max(1.0, 1 / options["p"]) * taps
    return output  # fmt: skip


def _assert_as_formula(got, expected, allowed):
    """NaN and +-inf where ``expected`` has them (rounded to ``got``'s dtype), the rest within ``allowed``."""
    rounded = expected.to(got.dtype)
    # near the dtype's largest value, whether the last rounding overflows is the rounding's choice
    decided = ~(expected.abs() > torch.finfo(got.dtype).max / 2)
    assert torch.equal(got.isnan()[decided], rounded.isnan()[decided]), (got, expected)
    assert torch.equal((got == math.inf)[decided], (rounded == math.inf)[decided]), (got, expected)
    assert torch.equal((got == -math.inf)[decided], (rounded == -math.inf)[decided]), (got, expected)
    finite = rounded.isfinite() & decided & got.isfinite()
    error = (got.double() - expected)[finite].abs()
    assert (error <= allowed[finite]).all(), (
        f"worst error {error.max():.3g}, allowed {allowed[finite][error.argmax()]:.3g}"
    )


@stress
@given(case=cases())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("native", PATHS)
def test_forward_is_the_naive_formula_whatever_the_numbers(case, dtype, native):
    smallest, largest = HALF_SCALES.get(dtype, (0.0, math.inf))
    case = {
        **case,
        "scale": min(max(case["scale"], smallest), largest),
        "offsets": tuple(min(max(offset, -largest), largest) for offset in case["offsets"]),
    }
    input, weight = _tensors(case, dtype)
    with mock.patch.dict(os.environ, {"ANYCONV_NATIVE": native}):
        got = _call(case, input, weight)
    expected = _call(case, input.double(), weight.double(), function=naive_generalized_conv)
    naive = _call(case, input, weight, function=naive_generalized_conv).double()
    eps = torch.finfo(dtype).eps
    taps = weight[0].numel()
    with torch.no_grad():
        scale = _rounding_scale(case, input.double(), weight.double())
    # a few units of the formula's rounding, or of its own float rounding where that is larger
    allowed = 4 * (naive - expected).abs().nan_to_num(0, 0, 0) + 8 * taps * eps * scale.nan_to_num(0, 0, 0)
    _assert_as_formula(got, expected, allowed + torch.finfo(dtype).tiny)


@stress
@given(case=cases(specials=False))
@pytest.mark.parametrize("native", PATHS)
def test_gradients_are_the_naive_formulas_where_finite(case, native):
    input, weight = _tensors(case, torch.float64)
    input.requires_grad_()
    weight.requires_grad_()
    with mock.patch.dict(os.environ, {"ANYCONV_NATIVE": native}):
        output = _call(case, input, weight)
        grad = torch.randn(
            output.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(case["seed"])
        )
        got = torch.autograd.grad(output, (input, weight), grad)
    expected = torch.autograd.grad(
        _call(case, input, weight, function=naive_generalized_conv), (input, weight), grad
    )
    for mine, theirs in zip(got, expected):
        finite = theirs.isfinite()
        # products of values near 1e6 and offsets near 1e4 carry float64 rounding of that size
        size = theirs[finite].abs().max() if finite.any() else 0.0
        magnitude = max(case["scale"], *map(abs, case["offsets"]))
        tolerance = 1e-9 * (size + magnitude**2 * weight[0].numel())
        torch.testing.assert_close(mine[finite], theirs[finite], rtol=1e-6, atol=float(tolerance))
