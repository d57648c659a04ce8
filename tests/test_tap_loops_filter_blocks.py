"""The tap loops' filter blocks (variants/tap_loops.cpp): the forward of a dense layer with many
taps (``dot``, ``l1``, ``l2``, ``max_plus``, ``min_plus``), and the variants the tap products
compose from it in inference. With two vectors of filters or more (32 in float32, 16 in float64)
and at least 64 taps, the lanes across filters, 14 positions of a row at a time
(``forward_filter_vectors``); otherwise FILTERS_TOGETHER filters at a time, the lanes across a
row's outputs (``forward_filter_blocks``).

Every width class the loops cut rows into (narrower than a vector, one vector, between one and
two, between two and four, wider; a single 1-D row in tiles of columns; rows of 14 positions and
a remainder, the last read near the input's end), filter counts that do and do not fill the
blocks, strides 1, 2 and 3, dilations and 1-D to 3-D, against torch's convolution in float64;
special values against the naive formula; gradients (the fields path's backward).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_reference import torch_conv
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine.plan import plan_conv
from anyconv.engine.tap_loops import FILTERS_TOGETHER, MAX_BLOCKED_CHANNELS, filter_blocks_fit
from anyconv.variants import resolve_variant

#: two threads, for the loops' split of their rows among them
pytestmark = [
    pytest.mark.skipif(
        not filter_blocks_fit(torch.ones(1, 1, 4), torch.ones(FILTERS_TOGETHER, 1, 3), 1),
        reason="the tap loops are not built here",
    ),
    pytest.mark.usefixtures("two_threads"),
]

#: the geometry arguments a case may leave out, and their defaults
_DEFAULTS = (("stride", 1), ("padding", 0), ("dilation", 1))
#: id, input shape, weight shape, arguments
CASES = [
    ("narrow-rows", (2, 3, 9, 7), (5, 3, 3, 3), {"padding": 1}),
    ("one-vector-float64", (1, 4, 10, 8), (8, 4, 3, 3), {"padding": 1}),
    ("one-vector-float32", (1, 4, 10, 16), (8, 4, 3, 3), {"padding": 1}),
    ("between-one-and-two", (2, 2, 9, 21), (4, 2, 3, 3), {"padding": 1}),
    ("between-two-and-four", (1, 2, 3, 45), (6, 2, 3, 3), {"padding": 1}),
    ("wide", (1, 2, 5, 70), (9, 2, 3, 5), {"padding": (1, 2)}),
    ("stem-7x7-stride-2", (2, 3, 40, 38), (8, 3, 7, 7), {"padding": 3, "stride": 2}),
    ("stride-3-dilation-2", (1, 5, 23, 29), (7, 5, 3, 3), {"padding": 2, "stride": (2, 3), "dilation": 2}),
    ("1-d-tiles-of-columns", (2, 3, 700), (4, 3, 5), {"padding": 2}),
    ("1-d-strided", (1, 4, 301), (12, 4, 11), {"padding": 5, "stride": 2}),
    ("3-d", (1, 3, 5, 9, 18), (6, 3, 3, 3, 3), {"padding": 1}),
    ("most-channels", (1, MAX_BLOCKED_CHANNELS, 6, 6), (4, MAX_BLOCKED_CHANNELS, 3, 3), {"padding": 1}),
    # two vectors of filters and more, at least 64 taps: the lanes across filters
    ("filter-vectors", (2, 8, 9, 30), (40, 8, 3, 3), {"padding": 1}),
    ("filter-vectors-stride-2", (1, 8, 11, 33), (33, 8, 3, 3), {"padding": 1, "stride": 2}),
    ("filter-vectors-stride-3", (1, 8, 17, 40), (64, 8, 3, 3), {"padding": 2, "stride": 3, "dilation": 2}),
    ("filter-vectors-end-of-input", (1, 8, 5, 19), (32, 8, 3, 3), {}),
    ("filter-vectors-half-blocks", (2, 16, 9, 14), (40, 16, 2, 2), {"stride": 2}),
    ("filter-vectors-narrow-rows", (1, 8, 6, 5), (32, 8, 3, 3), {"padding": 1}),
    ("filter-vectors-rows-of-8", (2, 8, 6, 16), (32, 8, 3, 3), {"padding": 1}),
    ("filter-vectors-1-d", (2, 16, 300), (48, 16, 5), {"padding": 2}),
    ("filter-vectors-3-d", (1, 3, 4, 6, 15), (32, 3, 3, 3, 3), {"padding": 1}),
]


def _path(x, w, name, arguments, **options):
    """The path the engine plans for ``name`` with ``options`` on one group."""
    stride, padding, dilation = (arguments.get(key, default) for key, default in _DEFAULTS)
    return plan_conv(x, w, resolve_variant(name, **options), stride, padding, dilation, 1, "zeros", None).path


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_each_geometry_equals_torch(case, dtype):
    _, x_shape, w_shape, arguments = case
    generator = torch.Generator().manual_seed(len(x_shape) * 100 + x_shape[-1])
    x = torch.randn(x_shape, generator=generator, dtype=dtype)
    w = torch.randn(w_shape, generator=generator, dtype=dtype)
    b = torch.randn(w_shape[0], generator=generator, dtype=dtype)
    assert _path(x, w, "dot", arguments) == "tap loops"
    expected = torch_conv(x.double(), w.double(), b.double(), **arguments)
    # float32: within a few units of its precision of the largest sum of magnitudes
    scale = torch_conv(x.double().abs(), w.double().abs(), **arguments).max().item()
    tolerance = 1e-12 if dtype == torch.float64 else 2**-20 * scale
    for bias in (b, None):
        got = anyconv.conv(x, w, bias, **arguments)
        reference = expected if bias is not None else expected - b.double().view(-1, *[1] * (x.dim() - 2))
        assert got.dtype == dtype and got.shape == reference.shape
        torch.testing.assert_close(got.double(), reference, rtol=tolerance, atol=tolerance)


def test_special_values_follow_the_formula():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 9, 21, generator=generator, dtype=torch.float64)
    w = torch.randn(6, 3, 3, 3, generator=generator, dtype=torch.float64)
    b = torch.randn(6, generator=generator, dtype=torch.float64)
    x[0, 1, 4, 7] = float("nan")
    x[1, 0, 0, 20] = float("inf")
    x[1, 2, 8, 0] = -float("inf")
    w[5, 0] = 0.0  # inf * 0: NaN, as the formula gives
    b[2] = float("nan")
    x[0, 0] += 1e6  # far from zero
    expected = naive_generalized_conv(x, w, "dot", b, padding=1)
    torch.testing.assert_close(anyconv.conv(x, w, b, padding=1), expected, equal_nan=True)


def test_gradients_equal_torch():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 8, 11, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 3, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, generator=generator, dtype=torch.float64, requires_grad=True)
    arguments = {"padding": 1, "stride": (1, 2)}
    grad = torch.randn(torch_conv(x, w, b, **arguments).shape, generator=generator, dtype=torch.float64)
    got = torch.autograd.grad(anyconv.conv(x, w, b, **arguments), (x, w, b), grad)
    want = torch.autograd.grad(torch_conv(x, w, b, **arguments), (x, w, b), grad)
    for value, reference in zip(got, want):
        torch.testing.assert_close(value, reference)
    torch.autograd.gradcheck(lambda *t: anyconv.conv(*t, **arguments), (x[:1, :, :5, :6], w[:4], b[:4]))
    torch.autograd.gradgradcheck(lambda *t: anyconv.conv(*t, **arguments), (x[:1, :, :5, :6], w[:4], b[:4]))


@pytest.mark.parametrize("filters", [5, 40])
def test_low_precision_rounds_once(filters):
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 7, 20, generator=generator)
    w = torch.randn(filters, 4, 3, 3, generator=generator)
    for dtype in (torch.bfloat16, torch.float16):
        if not filter_blocks_fit(x.to(dtype), w.to(dtype), 1):
            continue
        got = anyconv.conv(x.to(dtype), w.to(dtype), padding=1)
        exact = torch_conv(x.to(dtype).double(), w.to(dtype).double(), padding=1)
        assert got.dtype == dtype
        # one rounding of the float sums: within half a unit of the stored type, plus float's error
        torch.testing.assert_close(got.double(), exact.to(dtype).double(), rtol=2**-7, atol=1e-3)


#: the variants composed from the filter blocks' dot on dense layers in inference (engine/tap_products.py)
PRODUCTS = [
    ("cosine", {}),
    ("sharpened_cosine", {"exponent": 1.5, "q": 0.1}),
    ("polynomial", {"degree": 2}),
    ("rbf", {"gamma": 0.05}),
]
PRODUCT_CASES = [CASES[0], CASES[3], CASES[7], CASES[8], CASES[10], CASES[11], CASES[12]]


@pytest.mark.parametrize(("name", "options"), PRODUCTS, ids=[name for name, _ in PRODUCTS])
@pytest.mark.parametrize("case", PRODUCT_CASES, ids=[case[0] for case in PRODUCT_CASES])
def test_products_composed_from_the_blocks_equal_the_naive_formula(case, name, options):
    _, x_shape, w_shape, arguments = case
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(x_shape, generator=generator, dtype=torch.float64)
    w = torch.randn(w_shape, generator=generator, dtype=torch.float64)
    b = torch.randn(w_shape[0], generator=generator, dtype=torch.float64)
    expected = naive_generalized_conv(x, w, name, b, **arguments, **options)
    with torch.no_grad():
        assert _path(x, w, name, arguments, **options) == "tap products"
        torch.testing.assert_close(anyconv.generalized_conv(x, w, name, b, **arguments, **options), expected)
    # recorded for autograd: the cosine by the loops (a backward from the input, the weight and the
    # kept quotient), the others by the fields path's backward (which keeps less than their
    # composition) after the tap products' forward
    assert _path(x, w, name, arguments, **options) == ("tap products" if name == "cosine" else "tap forward")
    if name == "cosine":
        inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
        naive_inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
        output = anyconv.generalized_conv(*inputs[:2], name, inputs[2], **arguments)
        expected = naive_generalized_conv(*naive_inputs[:2], name, naive_inputs[2], **arguments)
        grad = torch.randn(output.shape, generator=generator, dtype=torch.float64)
        for got, want in zip(
            torch.autograd.grad(output, inputs, grad), torch.autograd.grad(expected, naive_inputs, grad)
        ):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("name", "options"), PRODUCTS, ids=[name for name, _ in PRODUCTS])
def test_products_on_zero_fields_and_special_values_equal_the_fields_path(name, options):
    # a zero field has no direction: the norms' rule (0 / eps), which the naive formula does not
    # follow; the fields path's own does. NaN and inf flow as in the fields path.
    _, x_shape, w_shape, arguments = CASES[3]
    generator = torch.Generator().manual_seed(17)
    x = torch.randn(x_shape, generator=generator, dtype=torch.float64)
    w = torch.randn(w_shape, generator=generator, dtype=torch.float64)
    x[0, :, :4] = 0
    x[1, 0, 5, 7] = float("nan")
    x[1, 1, 2, 3] = float("inf")
    with torch.no_grad():
        got = anyconv.generalized_conv(x, w, name, **arguments, **options)
    expected = anyconv.generalized_conv(x, w, name, **arguments, **options)  # the fields path
    torch.testing.assert_close(got, expected, equal_nan=True)


@pytest.mark.parametrize(
    "case", [CASES[0], CASES[3], CASES[6], CASES[8], CASES[10]], ids=lambda case: case[0]
)
def test_l2_equals_the_naive_formula_far_from_zero(case):
    # the loops take each difference: data far from zero does not cancel
    _, x_shape, w_shape, arguments = case
    generator = torch.Generator().manual_seed(19)
    x = torch.randn(x_shape, generator=generator, dtype=torch.float64) + 1e4
    w = torch.randn(w_shape, generator=generator, dtype=torch.float64) + 1e4
    b = torch.randn(w_shape[0], generator=generator, dtype=torch.float64)
    assert _path(x, w, "l2", arguments) == "tap loops"
    expected = naive_generalized_conv(x, w, "l2", b, **arguments)
    torch.testing.assert_close(
        anyconv.generalized_conv(x, w, "l2", b, **arguments), expected, rtol=1e-12, atol=1e-6
    )
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    naive_inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    output = anyconv.generalized_conv(*inputs[:2], "l2", inputs[2], **arguments)
    expected = naive_generalized_conv(*naive_inputs[:2], "l2", naive_inputs[2], **arguments)
    grad = torch.randn(output.shape, generator=generator, dtype=output.dtype)
    for value, reference in zip(
        torch.autograd.grad(output, inputs, grad), torch.autograd.grad(expected, naive_inputs, grad)
    ):
        torch.testing.assert_close(value, reference, rtol=1e-9, atol=1e-6)


#: the variants the blocks take besides dot, with the options that change their backward
DISTANCES = [("l1", {}), ("l1", {"adder_grad": True}), ("max_plus", {}), ("min_plus", {})]
_DISTANCE_IDS = ["l1", "l1-adder", "max_plus", "min_plus"]


def _tie_free(x_shape, w_shape, generator):
    """Inputs on which every tropical output has one winning tap: integers in the input, distinct
    fractions below 1/2 in each filter (the naive formula's amax splits a tie's gradient, the loops
    give it to the first tap)."""
    x = (torch.randperm(torch.Size(x_shape).numel(), generator=generator) % 300 - 150).reshape(x_shape)
    taps = torch.Size(w_shape[1:]).numel()
    fractions = torch.stack([torch.randperm(taps, generator=generator) for _ in range(w_shape[0])])
    return x.double(), (fractions / (2 * taps)).reshape(w_shape).double()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("name", "options"), DISTANCES, ids=_DISTANCE_IDS)
@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_distances_on_each_geometry_equal_the_naive_formula(case, name, options, dtype):
    _, x_shape, w_shape, arguments = case
    generator = torch.Generator().manual_seed(23 + x_shape[-1])
    x = torch.randn(x_shape, generator=generator, dtype=torch.float64)
    w = torch.randn(w_shape, generator=generator, dtype=torch.float64)
    b = torch.randn(w_shape[0], generator=generator, dtype=torch.float64)
    assert _path(x, w, name, arguments, **options) == "tap loops"
    expected = naive_generalized_conv(x, w, name, b, **arguments, **options)
    got = anyconv.generalized_conv(x.to(dtype), w.to(dtype), name, b.to(dtype), **arguments, **options)
    assert got.dtype == dtype and got.shape == expected.shape
    # float32: a few units of its precision of the largest sum of magnitudes (l1's sums grow with
    # the taps; a tropical output is one rounded sum)
    tolerance = 1e-12 if dtype == torch.float64 else 2**-20 * expected.abs().max().item()
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["dot", "l1", "max_plus", "min_plus"]),
    st.integers(1, 3),  # batch
    st.integers(1, 8),  # channels
    st.integers(FILTERS_TOGETHER, 40),  # filters
    st.integers(1, 12),  # rows
    st.integers(1, 70),  # width
    st.integers(1, 4),  # kernel
    st.integers(1, 3),  # stride
    st.integers(1, 2),  # dilation
    st.integers(0, 3),  # padding
)
def test_random_geometries_equal_the_references(
    name, batch, channels, filters, rows, width, kernel, stride, dilation, padding
):
    # dot against torch's convolution (with a bias), the distances against the naive formula
    span = dilation * (kernel - 1) + 1
    if rows + 2 * padding < span or width + 2 * padding < span:
        return
    generator = torch.Generator().manual_seed(batch * 1000 + width * 10 + kernel)
    x = torch.randn(batch, channels, rows, width, generator=generator, dtype=torch.float64)
    w = torch.randn(filters, channels, kernel, kernel, generator=generator, dtype=torch.float64)
    b = torch.randn(filters, generator=generator, dtype=torch.float64)
    arguments = {"stride": stride, "padding": padding, "dilation": dilation}
    if name == "dot":
        expected = torch_conv(x, w, b, **arguments)
    else:
        expected = naive_generalized_conv(x, w, name, b, **arguments)
    torch.testing.assert_close(
        anyconv.generalized_conv(x, w, name, b, **arguments), expected, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("filters", [5, 33])
@pytest.mark.parametrize("name", ["l1", "max_plus", "min_plus"])
def test_distances_take_blocks_of_any_channel_count(name, filters):
    # no matrix product: the blocks at any channel count, dot and l2 up to MAX_BLOCKED_CHANNELS
    channels = 2 * MAX_BLOCKED_CHANNELS + 3
    generator = torch.Generator().manual_seed(37)
    x, w = _tie_free((1, channels, 6, 19), (filters, channels, 3, 3), generator)
    arguments = {"padding": 2, "dilation": 2}
    assert _path(x, w, name, arguments) == "tap loops"
    assert _path(x, w, "dot", arguments) == "fields"
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w)]
    output = anyconv.generalized_conv(*inputs, name, **arguments)
    naive = [tensor.clone().requires_grad_() for tensor in (x, w)]
    expected = naive_generalized_conv(*naive, name, **arguments)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn(output.shape, generator=generator, dtype=output.dtype)
    got, want = torch.autograd.grad(output, inputs, grad), torch.autograd.grad(expected, naive, grad)
    for value, reference in zip(got, want):
        torch.testing.assert_close(value, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["l1", "max_plus", "min_plus"])
@pytest.mark.parametrize("where", ["input", "weight", "last-input-value", "infinities-only"])
def test_distances_on_special_values_follow_the_formula(name, where):
    # the tropical pair takes a plain maximum (minimum) where every value is finite and the NaN
    # rule otherwise: a NaN or an infinity anywhere, the last input value included, turns it on
    _, x_shape, w_shape, arguments = CASES[3]
    generator = torch.Generator().manual_seed(29)
    x = torch.randn(x_shape, generator=generator, dtype=torch.float64)
    w = torch.randn(w_shape, generator=generator, dtype=torch.float64)
    if where == "input":
        x[0, 1, 4, 7] = float("nan")
        x[1, 0, 0, 20] = float("inf")
        x[1, 1, 8, 0] = -float("inf")
    elif where == "weight":
        w[2, 1, 0, 2] = float("nan")
        w[3, 0, 1, 1] = -float("inf")
    elif where == "last-input-value":
        x[-1, -1, -1, -1] = float("nan")
    else:
        # +inf meets -inf: NaN terms in every precision of the formula
        x[0, 0, 3, 3] = float("inf")
        w[1, 0, 1, 1] = -float("inf")
        w[2, 0, 1, 1] = float("inf")
    expected = naive_generalized_conv(x, w, name, **arguments)
    for dtype in (torch.float64, torch.float32):
        got = anyconv.generalized_conv(x.to(dtype), w.to(dtype), name, **arguments)
        torch.testing.assert_close(got.double(), expected, equal_nan=True, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(("name", "options"), DISTANCES, ids=_DISTANCE_IDS)
@pytest.mark.parametrize("case", [CASES[0], CASES[6], CASES[8], CASES[10]], ids=lambda case: case[0])
def test_distance_gradients_equal_the_naive_formula(case, name, options, request):
    _, x_shape, w_shape, arguments = case
    generator = torch.Generator().manual_seed(31)
    x, w = _tie_free(x_shape, w_shape, generator)
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w)]
    output = anyconv.generalized_conv(*inputs, name, **arguments, **options)
    grad = torch.randn(output.shape, generator=generator, dtype=output.dtype)
    got = torch.autograd.grad(output, inputs, grad)
    if options.get("adder_grad"):
        # AdderNet's rule: the filters' p - w, the fields' clip(w - p, -1, 1); checked against
        # the same rule on the fields path (tests/test_native_low_precision.py checks its formulas)
        request.getfixturevalue("fields_for_dense")
        fields = [tensor.clone().requires_grad_() for tensor in (x, w)]
        output = anyconv.generalized_conv(*fields, name, **arguments, **options)
        want = torch.autograd.grad(output, fields, grad)
    else:
        naive = [tensor.clone().requires_grad_() for tensor in (x, w)]
        want = torch.autograd.grad(naive_generalized_conv(*naive, name, **arguments), naive, grad)
    for value, reference in zip(got, want):
        torch.testing.assert_close(value, reference, rtol=1e-9, atol=1e-9)


#: grouped layers of more than MAX_CHANNELS_PER_GROUP channels per group (ResNeXt's later stages),
#: whose filters go in blocks group by group: filter blocks (fewer than two vectors of filters per
#: group) and filter vectors (32 per group, 288 taps), strided, 1-D
GROUPED_CASES = [
    ("16-per-group", (2, 32, 6, 7), (8, 16, 3, 3), {"padding": 1, "groups": 2}),
    ("32-per-group", (1, 64, 5, 7), (64, 32, 3, 3), {"padding": 1, "groups": 2}),
    ("32-per-group-stride-2", (1, 96, 9, 11), (48, 32, 3, 3), {"padding": 1, "stride": 2, "groups": 3}),
    ("1-d", (2, 40, 30), (10, 20, 5), {"padding": 2, "groups": 2}),
]
GROUPED_VARIANTS = ["dot", "l1", "max_plus", "cosine"]


@pytest.mark.parametrize("name", GROUPED_VARIANTS)
@pytest.mark.parametrize("case", GROUPED_CASES, ids=[case[0] for case in GROUPED_CASES])
def test_grouped_layers_take_the_blocks_and_give_the_formulas_numbers(case, name):
    _, x_shape, w_shape, arguments = case
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(x_shape, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(w_shape, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(w_shape[0], generator=generator, dtype=torch.float64, requires_grad=True)
    groups = arguments["groups"]
    stride, padding, dilation = (arguments.get(key, default) for key, default in _DEFAULTS)
    path = plan_conv(x, w, resolve_variant(name), stride, padding, dilation, groups, "zeros", None).path
    assert filter_blocks_fit(x, w, groups)
    assert path == ("tap products" if name == "cosine" else "tap loops")
    output = anyconv.generalized_conv(x, w, name, b, **arguments)
    expected = naive_generalized_conv(x, w, name, b, **arguments)
    torch.testing.assert_close(output, expected)
    grad = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    got = torch.autograd.grad(output, (x, w, b), grad)
    for value, reference in zip(got, torch.autograd.grad(expected, (x, w, b), grad)):
        torch.testing.assert_close(value, reference)
    with torch.no_grad():
        torch.testing.assert_close(anyconv.generalized_conv(x, w, name, b, **arguments), expected)


def test_grouped_float32_blocks_equal_torch():
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(2, 1024, 7, 7, generator=generator)
    w = torch.randn(1024, 32, 3, 3, generator=generator)
    expected = torch_conv(x.double(), w.double(), padding=1, groups=32)
    scale = torch_conv(x.double().abs(), w.double().abs(), padding=1, groups=32).max().item()
    got = anyconv.conv(x, w, padding=1, groups=32)
    torch.testing.assert_close(got.double(), expected, rtol=2**-20 * scale, atol=2**-20 * scale)
