"""The tap-loops path (engine/tap_loops.py): depthwise and few-channels-per-group convolutions.

Every geometry it accepts, against torch's F.convNd (dot), the naive float64 formulas of each
variant, and the fields path (the same call with the tap loops turned off), forward and gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import case_tensors
from torch_reference import torch_conv
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine import paths
from anyconv.engine.plan import clear_plans, plan_conv
from anyconv.engine.tap_loops import (
    FILTERS_TOGETHER,
    MAX_BLOCKED_CHANNELS,
    _crop_into,
    _lays_out,
    _padded,
    tap_loops_fit,
    tap_sums_fit,
)
from anyconv.geometry import make_geometry
from anyconv.variants import resolve_variant

#: x shape, weight shape, arguments (groups always given)
CASES = [
    {"id": "2d-depthwise-3x3", "x": (2, 6, 9, 8), "w": (6, 1, 3, 3), "with": {"padding": 1, "groups": 6}},
    {
        "id": "2d-depthwise-stride2",
        "x": (2, 4, 9, 9),
        "w": (4, 1, 3, 3),
        "with": {"padding": 1, "stride": 2, "groups": 4},
    },
    {
        "id": "2d-depthwise-5x5-s2",
        "x": (1, 3, 11, 10),
        "w": (3, 1, 5, 5),
        "with": {"padding": 2, "stride": 2, "groups": 3},
    },
    {"id": "2d-depthwise-7x7", "x": (1, 4, 10, 9), "w": (4, 1, 7, 7), "with": {"padding": 3, "groups": 4}},
    {"id": "2d-multiplier-2", "x": (2, 3, 7, 7), "w": (6, 1, 3, 3), "with": {"padding": 1, "groups": 3}},
    {
        "id": "2d-grouped-4-per-group",
        "x": (1, 8, 7, 6),
        "w": (8, 4, 3, 3),
        "with": {"padding": 1, "groups": 2},
    },
    {"id": "2d-grouped-8-per-group", "x": (1, 16, 6, 6), "w": (4, 8, 3, 3), "with": {"groups": 2}},
    # the distances' limit (MAX_DISTANCE_CHANNELS_PER_GROUP); dot's on large images only
    {
        "id": "2d-grouped-16-per-group",
        "x": (1, 32, 6, 7),
        "w": (8, 16, 3, 3),
        "with": {"padding": 1, "groups": 2},
    },
    {"id": "1d-grouped-24-per-group", "x": (2, 48, 11), "w": (6, 24, 3), "with": {"groups": 2}},
    {
        "id": "2d-dilated",
        "x": (1, 4, 11, 11),
        "w": (4, 1, 3, 3),
        "with": {"padding": 2, "dilation": 2, "groups": 4},
    },
    {
        "id": "2d-stride-dilation-asym",
        "x": (2, 4, 12, 9),
        "w": (4, 2, 2, 3),
        "with": {"stride": (2, 1), "dilation": (1, 2), "groups": 2},
    },
    {
        "id": "2d-same-even-kernel",
        "x": (1, 4, 7, 8),
        "w": (4, 1, 4, 2),
        "with": {"padding": "same", "groups": 4},
    },
    {
        "id": "2d-per-side-padding",
        "x": (1, 2, 6, 7),
        "w": (2, 1, 3, 3),
        "with": {"padding": ((2, 0), (0, 1)), "groups": 2},
    },
    {
        "id": "2d-reflect",
        "x": (1, 4, 7, 7),
        "w": (4, 1, 3, 3),
        "with": {"padding": 1, "padding_mode": "reflect", "groups": 4},
    },
    {
        "id": "2d-circular",
        "x": (1, 4, 6, 7),
        "w": (4, 1, 3, 3),
        "with": {"padding": 2, "padding_mode": "circular", "groups": 4},
    },
    {"id": "1d-depthwise-k11", "x": (2, 4, 30), "w": (4, 1, 11), "with": {"padding": 5, "groups": 4}},
    {"id": "1d-stride3", "x": (1, 6, 20), "w": (6, 2, 4), "with": {"stride": 3, "groups": 3}},
    {"id": "3d-depthwise", "x": (1, 3, 5, 6, 5), "w": (3, 1, 3, 3, 3), "with": {"padding": 1, "groups": 3}},
    {
        "id": "3d-stride2",
        "x": (1, 4, 6, 5, 7),
        "w": (4, 2, 3, 2, 3),
        "with": {"stride": 2, "padding": 1, "groups": 2},
    },
    {"id": "4d-depthwise", "x": (1, 2, 4, 4, 3, 4), "w": (2, 1, 2, 2, 2, 2), "with": {"groups": 2}},
    {"id": "output-of-one", "x": (3, 4, 3, 3), "w": (4, 1, 3, 3), "with": {"groups": 4}},
]
IDS = [case["id"] for case in CASES]
#: (variant name, options): every variant the tap loops compute
VARIANTS = [
    ("dot", {}),
    ("l1", {}),
    ("l1", {"adder_grad": True}),
    ("l2", {}),
    ("max_plus", {}),
    ("min_plus", {}),
]
VARIANT_IDS = ["dot", "l1", "l1-adder", "l2", "max_plus", "min_plus"]

#: two threads, for the loops' split of their rows among them
pytestmark = [
    pytest.mark.skipif(
        not tap_loops_fit(resolve_variant("dot"), torch.ones(1, 2, 3), torch.ones(2, 1, 3), 2),
        reason="the tap loops are not compiled here (no C++ compiler, or ANYCONV_NATIVE=0)",
    ),
    pytest.mark.usefixtures("two_threads"),
]


def _fields_path(monkeypatch, function):
    """Run ``function`` with the fast paths turned off: the engine's fields path computes it."""
    with monkeypatch.context() as patch:
        patch.setattr(paths, "tap_loops_fit", lambda *arguments: False)
        clear_plans()  # the plans made before the patch chose the fast path
        try:
            return function()
        finally:
            clear_plans()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_path_is_taken(case):
    x, w, _ = case_tensors(case)
    variant, groups = resolve_variant("l1"), case["with"]["groups"]
    assert plan_conv(x, w, variant, 1, 0, 1, groups, "zeros", None).path == "tap loops"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_dot_equals_torch(case):
    x, w, b = case_tensors(case)
    if w.dim() > 5:
        pytest.skip("torch has no 4-D convolution (the naive formula checks this case)")
    expected = torch_conv(x, w, b, **case["with"])
    torch.testing.assert_close(anyconv.conv(x, w, b, **case["with"]), expected)
    torch.testing.assert_close(anyconv.generalized_conv(x, w, "dot", b, **case["with"]), expected)


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_equals_the_naive_formula(case, name, options):
    x, w, b = case_tensors(case)
    expected = naive_generalized_conv(x, w, name, b, **case["with"])
    torch.testing.assert_close(anyconv.generalized_conv(x, w, name, b, **case["with"], **options), expected)


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_equal_the_fields_path(case, name, options, monkeypatch):
    x, w, b = case_tensors(case)

    def gradients():
        inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
        output = anyconv.generalized_conv(*inputs[:2], name, inputs[2], **case["with"], **options)
        grad = torch.linspace(-1, 1, output.numel(), dtype=output.dtype).view(output.shape)
        return torch.autograd.grad(output, inputs, grad)

    for got, expected in zip(gradients(), _fields_path(monkeypatch, gradients)):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("name", "options"),
    [case for case in VARIANTS if not case[1]],
    ids=VARIANT_IDS[:1] + VARIANT_IDS[3:] + ["l1"],
)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_equal_the_naive_formula(case, name, options):
    x, w, b = case_tensors(case)
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    naive_inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    output = anyconv.generalized_conv(*inputs[:2], name, inputs[2], **case["with"])
    expected = naive_generalized_conv(*naive_inputs[:2], name, naive_inputs[2], **case["with"])
    grad = torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(output, inputs, grad)
    for value, reference in zip(got, torch.autograd.grad(expected, naive_inputs, grad)):
        torch.testing.assert_close(value, reference)


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize(
    "case", [case for case in CASES if case["id"] in ("2d-multiplier-2", "1d-stride3", "3d-stride2")]
)
def test_gradcheck(case, name, options):
    x, w, b = (tensor.requires_grad_() for tensor in case_tensors(case))
    if name == "l1" and options:
        pytest.skip("AdderNet's rule is not the derivative of the output")
    assert torch.autograd.gradcheck(
        lambda x, w, b: anyconv.generalized_conv(x, w, name, b, **case["with"], **options), (x, w, b)
    )


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_float32_matches_float64(name, options):
    case = CASES[0]
    x, w, b = case_tensors(case)
    expected = anyconv.generalized_conv(x, w, name, b, **case["with"], **options)
    got = anyconv.generalized_conv(x.float(), w.float(), name, b.float(), **case["with"], **options)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("budget", [1, 10**9], ids=["a-sample-per-chunk", "one-chunk"])
def test_chunks_of_samples_give_the_same_numbers(budget):
    x, w, b = case_tensors({"x": (5, 4, 6, 6), "w": (4, 1, 3, 3)})
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    output = anyconv.generalized_conv(
        *inputs[:2], "max_plus", inputs[2], padding=1, groups=4, memory_budget=budget
    )
    expected = naive_generalized_conv(x, w, "max_plus", b, padding=1, groups=4)
    torch.testing.assert_close(output, expected)
    output.sum().backward()
    assert inputs[0].grad.shape == x.shape


def test_unbatched_input():
    x, w, b = case_tensors(CASES[0])
    torch.testing.assert_close(
        anyconv.generalized_conv(x[0], w, "l1", b, padding=1, groups=6),
        naive_generalized_conv(x[:1], w, "l1", b, padding=1, groups=6)[0],
    )


@pytest.mark.parametrize("name", ["max_plus", "min_plus"])
def test_a_tropical_tie_goes_to_the_first_tap(name, monkeypatch):
    # a constant image ties every tap of a constant filter: the fields path gives the first one all
    x = torch.ones(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.zeros(2, 1, 2, 2, dtype=torch.float64, requires_grad=True)

    def gradients():
        output = anyconv.generalized_conv(x, w, name, groups=2)
        return torch.autograd.grad(output.sum(), (x, w))

    for got, expected in zip(gradients(), _fields_path(monkeypatch, gradients)):
        torch.testing.assert_close(got, expected)


#: rows of whole vectors and a partial one (37, 70 and 14 outputs wide), stride 1 and 2, dense,
#: depthwise and 16 channels per group
WIDE_ROWS = [
    ((2, 3, 30, 37), (8, 3, 3, 3), {"padding": 1}),
    ((2, 6, 12, 37), (6, 1, 3, 3), {"padding": 1, "groups": 6, "stride": 2}),
    ((1, 4, 5, 70), (4, 1, 5, 5), {"padding": 2, "groups": 4}),
    ((2, 32, 5, 14), (8, 16, 3, 3), {"padding": 1, "groups": 2}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", ["max_plus", "min_plus"])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "arguments"), WIDE_ROWS, ids=["dense", "depthwise-s2", "5x5", "grouped-14"]
)
def test_tropical_gradients_on_wide_rows(x_shape, w_shape, arguments, name, dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=generator, dtype=dtype, requires_grad=True)
    w = torch.randn(w_shape, generator=generator, dtype=dtype, requires_grad=True)
    variant, groups = resolve_variant(name), arguments.get("groups", 1)
    stride, padding = arguments.get("stride", 1), arguments["padding"]
    assert plan_conv(x, w, variant, stride, padding, 1, groups, "zeros", None).path == "tap loops"
    output = anyconv.generalized_conv(x, w, name, **arguments)
    grad = torch.randn(output.shape, generator=generator, dtype=dtype)
    got = torch.autograd.grad(output, (x, w), grad)
    x64, w64 = (tensor.detach().double().requires_grad_() for tensor in (x, w))
    expected = naive_generalized_conv(x64, w64, name, **arguments)
    torch.testing.assert_close(output, expected.to(dtype))
    for got_grad, expected_grad in zip(got, torch.autograd.grad(expected, (x64, w64), grad.double())):
        torch.testing.assert_close(got_grad, expected_grad.to(dtype))


#: stride-2 grouped layers on rows wide enough for whole blocks of both phases (the input gradient's
#: crop joins them by permutes), the padding before a row even and odd, widths even and odd
TWO_PHASES = [
    ((2, 3, 5, 70), (3, 1, 3, 3), {"padding": 1, "groups": 3, "stride": 2}),
    ((1, 4, 4, 71), (8, 2, 4, 4), {"padding": (0, 2), "groups": 2, "stride": 2}),
    ((1, 2, 3, 101), (2, 1, 1, 5), {"padding": (0, 3), "groups": 2, "stride": (1, 2)}),
    ((2, 3, 96), (3, 1, 3), {"padding": 0, "groups": 3, "stride": 2}),
]


@pytest.mark.parametrize("name", ["dot", "l1", "max_plus"])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "arguments"), TWO_PHASES, ids=["odd-pad", "even-pad", "pad3", "1d"]
)
def test_two_phase_rows_give_the_formulas_numbers(x_shape, w_shape, arguments, name):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(x_shape, generator=generator, requires_grad=True)
    w = torch.randn(w_shape, generator=generator, requires_grad=True)
    variant, groups = resolve_variant(name), arguments["groups"]
    plan = plan_conv(x, w, variant, arguments["stride"], arguments["padding"], 1, groups, "zeros", None)
    assert plan.path == "tap loops"
    output = anyconv.generalized_conv(x, w, name, **arguments)
    grad = torch.randn(output.shape, generator=generator)
    got = torch.autograd.grad(output, (x, w), grad)
    x64, w64 = (tensor.detach().double().requires_grad_() for tensor in (x, w))
    expected = naive_generalized_conv(x64, w64, name, **arguments)
    torch.testing.assert_close(output, expected.float())
    for got_grad, expected_grad in zip(got, torch.autograd.grad(expected, (x64, w64), grad.double())):
        torch.testing.assert_close(got_grad, expected_grad.float())


#: depthwise layers on images narrower than a vector, whose forward holds channels in the vectors:
#: a partial last block of channels (20, 37), 1-D to 3-D, asymmetric padding, dilation
NARROW_DEPTHWISE = [
    ((2, 20, 7, 7), (20, 1, 5, 5), {"padding": 2, "groups": 20}),
    ((1, 37, 5, 9), (37, 1, 3, 3), {"padding": (1, 0), "dilation": (1, 2), "groups": 37}),
    ((2, 16, 11), (16, 1, 3), {"padding": 1, "groups": 16}),
    ((1, 17, 3, 4, 4), (17, 1, 3, 3, 3), {"padding": 1, "groups": 17}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", ["dot", "l1", "l2", "max_plus", "min_plus"])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "arguments"), NARROW_DEPTHWISE, ids=["5x5@7", "asym", "1d", "3d"]
)
def test_narrow_depthwise_forward_as_the_formula(x_shape, w_shape, arguments, name, dtype):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(x_shape, generator=generator, dtype=dtype)
    w = torch.randn(w_shape, generator=generator, dtype=dtype)
    b = torch.randn(w_shape[0], generator=generator, dtype=dtype)
    x[0, x_shape[1] - 1].view(-1)[3] = float("nan")  # in the last, partial block of channels
    x[0, 2].view(-1)[0] = float("inf")
    expected = naive_generalized_conv(x, w, name, b, **arguments)
    torch.testing.assert_close(anyconv.generalized_conv(x, w, name, b, **arguments), expected, equal_nan=True)


@pytest.mark.parametrize("name", ["dot", "l1", "l2", "max_plus", "min_plus"])
def test_nan_and_inf_propagate_as_the_formula(name):
    x, w, b = case_tensors(CASES[0])
    x[0, 1, 3, 4] = float("nan")
    x[1, 2, 0, 0] = float("inf")
    expected = naive_generalized_conv(x, w, name, b, padding=1, groups=6)
    torch.testing.assert_close(
        anyconv.generalized_conv(x, w, name, b, padding=1, groups=6), expected, equal_nan=True
    )


@pytest.mark.parametrize(
    ("name", "options"), [case for case in VARIANTS if case[0] in ("dot", "l1", "l2") and not case[1]]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_an_infinite_weight_gives_the_formulas_gradients_on_rows_past_a_vector(name, options, dtype):
    """Rows of 21 outputs: a whole vector and a partial one per row, whose unused lanes must not
    carry 0 x inf = NaN into the weight's gradient."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 21, generator=generator, dtype=torch.float64)
    w = torch.randn(3, 1, 3, 3, generator=generator, dtype=torch.float64)
    w[1, 0, 1, 2] = float("inf")
    # positive: the infinite tap's weight gradient is then infinite (not NaN) in the formula
    grad = torch.rand(2, 3, 5, 21, generator=generator, dtype=torch.float64) + 0.5
    arguments = {"padding": 1, "groups": 3, **options}
    inputs = [tensor.to(dtype).requires_grad_() for tensor in (x, w)]
    got = torch.autograd.grad(anyconv.generalized_conv(*inputs, name, **arguments), inputs, grad.to(dtype))
    naive_inputs = [tensor.clone().requires_grad_() for tensor in (x, w)]
    expected = torch.autograd.grad(
        naive_generalized_conv(*naive_inputs, name, **arguments), naive_inputs, grad
    )
    for value, reference in zip(got, expected):
        assert value.isfinite().any()
        torch.testing.assert_close(value, reference.to(dtype), equal_nan=True, atol=1e-4, rtol=1e-4)


def test_other_variants_and_dense_convolutions_take_other_paths():
    x = torch.randn(1, 4, 5, 5)
    assert not tap_loops_fit(resolve_variant("cosine"), x, torch.randn(4, 1, 3, 3), 4)
    # a dense layer with few taps (3 channels x 3 x 3) on a large input takes them for every
    # variant they know, whatever its filters; one with more taps (3 x 7 x 7), or on a small input,
    # in filter blocks, and not with fewer filters than a block or more channels than the cache holds
    image = torch.randn(1, 3, 32, 32)
    assert tap_loops_fit(resolve_variant("l1"), image, torch.randn(2, 3, 3, 3), 1)
    assert not tap_loops_fit(resolve_variant("l1"), image, torch.randn(FILTERS_TOGETHER - 1, 3, 7, 7), 1)
    assert not tap_loops_fit(resolve_variant("l1"), image[..., :16], torch.randn(2, 3, 3, 3), 1)
    for name in ("dot", "l1", "l2", "max_plus", "min_plus"):
        assert tap_loops_fit(resolve_variant(name), image, torch.randn(16, 3, 7, 7), 1)
    # a 1x1 kernel on a channels-last input: the fields path reads it in place
    wide = torch.randn(2, 40, 9, 9)
    assert tap_loops_fit(resolve_variant("l1"), wide, torch.randn(16, 40, 1, 1), 1)
    channels_last = wide.contiguous(memory_format=torch.channels_last)
    assert not tap_loops_fit(resolve_variant("l1"), channels_last, torch.randn(16, 40, 1, 1), 1)
    assert tap_loops_fit(resolve_variant("l1"), channels_last, torch.randn(16, 40, 3, 3), 1)
    assert tap_loops_fit(resolve_variant("dot"), x, torch.randn(4, 4, 3, 3), 1)
    assert not tap_loops_fit(resolve_variant("dot"), x, torch.randn(FILTERS_TOGETHER - 1, 4, 3, 3), 1)
    wide = torch.randn(1, MAX_BLOCKED_CHANNELS + 1, 5, 5)
    assert not tap_loops_fit(resolve_variant("dot"), wide, torch.randn(8, MAX_BLOCKED_CHANNELS + 1, 3, 3), 1)
    assert not tap_sums_fit(x, torch.randn(4, 4, 3, 3), 1)
    assert not tap_loops_fit(resolve_variant("dot"), torch.randn(1, 32, 5, 5), torch.randn(4, 16, 3, 3), 2)
    assert not tap_loops_fit(
        resolve_variant("dot"), x.to(torch.int64), torch.ones(4, 1, 3, 3, dtype=torch.int64), 4
    )


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(0, 2),
    st.sampled_from(["dot", "l1", "max_plus"]),
)
def test_random_geometries_equal_the_naive_formula(
    groups, per_group, multiplier, kernel, stride, padding, name
):
    generator = torch.Generator().manual_seed(groups * 100 + kernel * 10 + padding)
    x = torch.randn(2, groups * per_group, 7, 6, generator=generator, dtype=torch.float64)
    w = torch.randn(groups * multiplier, per_group, kernel, kernel, generator=generator, dtype=torch.float64)
    arguments = {"stride": stride, "padding": padding, "groups": groups}
    torch.testing.assert_close(
        anyconv.generalized_conv(x, w, name, **arguments), naive_generalized_conv(x, w, name, **arguments)
    )


@pytest.mark.parametrize("case", CASES[:3], ids=IDS[:3])
def test_double_backward_equals_torch(case):
    # the loops' gradients are not differentiable: a create_graph backward takes the custom op's
    x = torch.randn(case["x"], dtype=torch.float64, requires_grad=True)
    w = torch.randn(case["w"], dtype=torch.float64, requires_grad=True)
    assert tap_loops_fit(resolve_variant("dot"), x, w, case["with"]["groups"])
    results = []
    for conv in (anyconv.conv, torch_conv):
        (grad_x,) = torch.autograd.grad(conv(x, w, **case["with"]).square().sum(), x, create_graph=True)
        results.append(torch.autograd.grad(grad_x.square().sum(), (x, w)))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_vmap_and_channels_last_equal_torch():
    x, w = torch.randn(3, 2, 6, 9, 8, dtype=torch.float64), torch.randn(6, 1, 3, 3, dtype=torch.float64)
    batched = torch.func.vmap(lambda sample: anyconv.conv(sample, w, padding=1, groups=6))(x)
    torch.testing.assert_close(batched, torch.stack([torch_conv(s, w, padding=1, groups=6) for s in x]))
    last = x[0].to(memory_format=torch.channels_last)
    output = anyconv.conv(last, w, padding=1, groups=6)
    assert output.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(output, torch_conv(x[0], w, padding=1, groups=6))


@settings(max_examples=60, deadline=None)
@given(
    ndim=st.integers(1, 3),
    size=st.integers(1, 9),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    padding=st.integers(0, 3),
    dilation=st.integers(1, 2),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int8]),
)
def test_the_loops_padded_layout_and_its_adjoint_equal_torchs_pad_and_split(
    ndim, size, kernel, stride, padding, dilation, dtype
):
    # the native pass that pads and splits the last dimension into stride phases, and its adjoint
    sizes = tuple(size + axis for axis in range(ndim))
    if any(s + 2 * padding < dilation * (kernel - 1) + 1 for s in sizes):
        return
    geometry = make_geometry(sizes, kernel, stride=stride, padding=padding, dilation=dilation)
    image = (torch.randn(2, 3, *sizes) * 50).to(dtype)
    extra = -geometry.padded_size[-1] % stride
    amounts = (geometry.torch_pad[0], geometry.torch_pad[1] + extra, *geometry.torch_pad[2:])
    expected = torch.nn.functional.pad(image, amounts).unflatten(-1, (-1, stride)).movedim(-1, 2)
    assert torch.equal(_padded(image, geometry), expected)
    # a non-contiguous image takes torch's own pad and copy
    assert torch.equal(_padded(image.transpose(0, 1).contiguous().transpose(0, 1), geometry), expected)
    grad_padded = (torch.randn(expected.shape) * 50).to(dtype)
    interior = tuple(slice(before, before + s) for (before, _), s in zip(geometry.padding, sizes))
    cropped = grad_padded.movedim(2, -1).flatten(-2)[(slice(None), slice(None), *interior)]
    for grad_image in (torch.empty_like(image), torch.empty_like(image.transpose(0, 1)).transpose(0, 1)):
        _crop_into(grad_image, grad_padded, geometry)
        assert torch.equal(grad_image, cropped)


@pytest.mark.parametrize("filters", [5, 80], ids=["loops-backward", "fields-backward"])
@pytest.mark.parametrize("name", ["dot", "l1", "max_plus"])
def test_a_dense_first_layer_equals_the_naive_formula(name, filters):
    # a network's first layer: three image channels, 3 x 3, stride 2, on a 32 x 34 image; with
    # more than MAX_DENSE_LOOPS_BACKWARD_FILTERS filters its backward is the fields path's
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 32, 34, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(filters, 3, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    arguments = {"stride": 2, "padding": 1}
    plan = plan_conv(x.detach(), w.detach(), resolve_variant(name), 2, 1, 1, 1, "zeros", None)
    assert plan.path == "tap loops"
    got = anyconv.generalized_conv(x, w, name, **arguments)
    expected = naive_generalized_conv(x, w, name, **arguments)
    torch.testing.assert_close(got, expected)
    grad = torch.randn(got.shape, generator=generator, dtype=torch.float64)
    ours = torch.autograd.grad(got, (x, w), grad)
    for mine, theirs in zip(ours, torch.autograd.grad(expected, (x, w), grad)):
        torch.testing.assert_close(mine, theirs)
    if name == "dot":
        torch.testing.assert_close(got, torch_conv(x, w, **arguments))


CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize(
    "case", [case for case in CASES if len(case["x"]) in CHANNELS_LAST], ids=lambda case: case["id"]
)
def test_channels_last_input_equals_the_naive_formula(case, name, options):
    """A channels-last input (as timm's ConvNeXt gives its depthwise layers): the formula's numbers
    forward and backward, and a channels-last output."""
    x, w, b = case_tensors(case)
    layout = CHANNELS_LAST[x.dim()]
    last = x.contiguous(memory_format=layout).requires_grad_()
    inputs = [last, w.clone().requires_grad_(), b.clone().requires_grad_()]
    output = anyconv.generalized_conv(*inputs[:2], name, inputs[2], **case["with"], **options)
    assert output.is_contiguous(memory_format=layout)
    naive_inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    expected = naive_generalized_conv(*naive_inputs[:2], name, naive_inputs[2], **case["with"])
    torch.testing.assert_close(output, expected)
    if name == "l1" and options:
        return  # AdderNet's rule is not the derivative of the output
    grad = torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(1))
    for got, reference in zip(
        torch.autograd.grad(output, inputs, grad), torch.autograd.grad(expected, naive_inputs, grad)
    ):
        torch.testing.assert_close(got, reference)


# depthwise layers the loops read channels-last in place: rows wider than a vector, channel counts
# that leave a partial block of lanes, dilation, strides across rows, 3-D
IN_PLACE_CASES = [
    {
        "id": "wide-rows-partial-block",
        "x": (2, 20, 9, 21),
        "w": (20, 1, 3, 3),
        "with": {"padding": 1, "groups": 20},
    },
    {
        "id": "7x7-many-channels",
        "x": (1, 40, 18, 17),
        "w": (40, 1, 7, 7),
        "with": {"padding": 3, "groups": 40},
    },
    {
        "id": "dilated-row-stride",
        "x": (2, 17, 11, 19),
        "w": (17, 1, 3, 3),
        "with": {"padding": 2, "dilation": 2, "stride": (2, 1), "groups": 17},
    },
    {"id": "few-channels", "x": (2, 3, 8, 20), "w": (3, 1, 3, 5), "with": {"padding": (1, 2), "groups": 3}},
    {"id": "3d", "x": (1, 18, 4, 6, 17), "w": (18, 1, 3, 3, 3), "with": {"padding": 1, "groups": 18}},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["dot", "l1", "max_plus"])
@pytest.mark.parametrize("case", IN_PLACE_CASES, ids=[case["id"] for case in IN_PLACE_CASES])
def test_a_channels_last_depthwise_input_is_read_in_place(case, name, dtype):
    x, w, b = case_tensors(case)
    layout = CHANNELS_LAST[x.dim()]
    last = x.to(dtype).contiguous(memory_format=layout)
    assert tap_loops_fit(resolve_variant(name), last, w, case["with"]["groups"])
    output = anyconv.generalized_conv(last, w.to(dtype), name, b.to(dtype), **case["with"])
    assert output.dtype == dtype and output.is_contiguous(memory_format=layout)
    expected = naive_generalized_conv(x, w, name, b, **case["with"])
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(
        output.double(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item()
    )
    if dtype == torch.float64:
        # the channels-first input's loops, to rounding: the two loops sum the taps in one order,
        # but whether the compiler fuses a multiply and an add into one rounding (FMA) can differ
        # between them (seen with AVX2's 256-bit vectors; with AVX-512 the numbers were equal)
        torch.testing.assert_close(
            output, anyconv.generalized_conv(x, w, name, b, **case["with"]), rtol=1e-14, atol=1e-14
        )


@pytest.mark.parametrize("name", ["cosine", "sharpened_cosine"])
@pytest.mark.parametrize("case", IN_PLACE_CASES, ids=[case["id"] for case in IN_PLACE_CASES])
def test_a_channels_last_depthwise_quotient_is_read_in_place(case, name):
    """The cosines' one pass of the loops (anyconv::tap_quotient, no graph to record) on a
    channels-last input: the formula's numbers, a channels-last output."""
    x, w, b = case_tensors(case)
    layout = CHANNELS_LAST[x.dim()]
    with torch.no_grad():
        output = anyconv.generalized_conv(x.contiguous(memory_format=layout), w, name, b, **case["with"])
    assert output.is_contiguous(memory_format=layout)
    torch.testing.assert_close(output, naive_generalized_conv(x, w, name, b, **case["with"]))


@pytest.mark.parametrize("name", ["cosine", "sharpened_cosine"])
@pytest.mark.parametrize(
    "case",
    [
        {"id": "12-wide-5x5", "x": (2, 32, 12, 12), "w": (32, 1, 5, 5), "with": {"padding": 2, "groups": 32}},
        {
            "id": "9-wide-1x3",
            "x": (1, 16, 5, 9),
            "w": (16, 1, 1, 3),
            "with": {"padding": (0, 1), "groups": 16},
        },
        {"id": "7-wide", "x": (1, 16, 7, 7), "w": (16, 1, 3, 3), "with": {"padding": 1, "groups": 16}},
    ],
    ids=lambda case: case["id"],
)
def test_the_quotient_on_rows_narrower_than_a_vector_equals_the_formula(case, name):
    """Channels first, rows narrower than a vector: the channel-vector quotient, whose |p|^2 is a
    sum over kernel rows of the rows' sums of squares where a row holds a whole block of outputs."""
    x, w, b = case_tensors(case)
    with torch.no_grad():
        output = anyconv.generalized_conv(x, w, name, b, **case["with"])
    torch.testing.assert_close(output, naive_generalized_conv(x, w, name, b, **case["with"]))


@pytest.mark.parametrize("variant", ["dot", "l1", "max_plus"])
@pytest.mark.parametrize("groups", [8, 2])
def test_eager_calls_skip_the_operators_dispatch_with_the_same_numbers(variant, groups):
    # an eager call nothing watches takes the loops' bodies through an autograd Function; the
    # custom operator (what compile, export and dispatch modes see) gives the same bits
    from anyconv.engine.tap_loops import loops_arguments, tap_loops_backward_op, tap_loops_conv, tap_loops_op

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 9, 9, generator=generator, requires_grad=True)
    w = torch.randn(8, 8 // groups, 3, 3, generator=generator, requires_grad=True)
    b = torch.randn(8, generator=generator, requires_grad=True)
    instance = resolve_variant(variant)
    geometry = make_geometry((9, 9), 3, padding=1)
    assert tap_loops_fit(instance, x, w, groups)
    eager = tap_loops_conv(x, w, b, instance, geometry, groups, 2**20)
    assert type(eager.grad_fn).__name__ == "_TapLoopsFunctionBackward"
    through_op = tap_loops_op(x, w, b, *loops_arguments(instance, geometry, groups, 2**20))
    assert torch.equal(eager, through_op)
    grad = torch.randn(eager.shape, generator=generator)
    eager_grads = torch.autograd.grad(eager, (x, w, b), grad)
    op_grads = torch.autograd.grad(through_op, (x, w, b), grad)
    for found, expected in zip(eager_grads, op_grads):
        assert torch.equal(found, expected)
    # the backward's operator, which the eager backwards (the operator's own too) skip
    backward_op = tap_loops_backward_op(
        grad, x, w, *loops_arguments(instance, geometry, groups, 2**20), [True] * 2
    )
    for found, expected in zip(eager_grads, backward_op):
        assert torch.equal(found, expected)
    with torch.no_grad():
        assert torch.equal(tap_loops_conv(x, w, b, instance, geometry, groups, 2**20), through_op)


@pytest.mark.parametrize("groups", [8, 2])
def test_the_eager_quotient_skips_its_operators_dispatch_with_the_same_numbers(groups):
    from anyconv.engine.ops import op_padding
    from anyconv.engine.tap_loops import tap_quotient_conv, tap_quotient_op

    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 9, 9, generator=generator)
    w = torch.randn(8, 8 // groups, 3, 3, generator=generator)
    scale, offset = torch.rand(8, generator=generator) + 0.5, torch.full((8,), 1e-3)
    geometry = make_geometry((9, 9), 3, padding=1)
    assert tap_loops_fit(resolve_variant("dot"), x, w, groups)
    eager = tap_quotient_conv(x, w, scale, offset, geometry, groups, 2**20)
    through_op = tap_quotient_op(x, w, scale, offset, [1, 1], op_padding(geometry), [1, 1], groups, 2**20)
    assert torch.equal(eager, through_op)


#: the forward's layouts: planes of a padded copy, a grouped layer laid out by the loops, channel
#: vectors (depthwise rows narrower than a vector, or a channels-last input read in place)
BIAS_LAYOUTS = [
    pytest.param((2, 24, 30, 30), (24, 1, 3, 3), 24, False, id="planes"),
    pytest.param((2, 16, 12, 12), (32, 4, 3, 3), 4, False, id="grouped"),
    pytest.param((2, 32, 7, 7), (32, 1, 5, 5), 32, False, id="narrow-rows"),
    pytest.param((2, 32, 14, 14), (32, 1, 7, 7), 32, True, id="channels-last"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["float64", "bfloat16"])
@pytest.mark.parametrize(("x_shape", "w_shape", "groups", "channels_last"), BIAS_LAYOUTS)
def test_the_loops_add_the_bias_as_they_store(x_shape, w_shape, groups, channels_last, dtype):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(x_shape, generator=generator).to(dtype)
    w = torch.randn(w_shape, generator=generator).to(dtype)
    b = (100 * torch.randn(w_shape[0], generator=generator)).to(dtype)
    b[0], b[1] = float("nan"), float("-inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert plan_conv(x, w, resolve_variant("dot"), 1, 0, 1, groups, "zeros", None).path == "tap loops"
    got = anyconv.conv(x, w, b, padding=w_shape[-1] // 2, groups=groups)
    expected = torch_conv(x.double(), w.double(), b.double(), padding=w_shape[-1] // 2, groups=groups)
    assert got[:, 0].isnan().all() and (got[:, 1] == float("-inf")).all()
    # one rounding of the sum and the bias together: within the stored type's half unit of it
    tolerance = 0 if dtype == torch.float64 else torch.finfo(dtype).eps
    torch.testing.assert_close(got[:, 2:].double(), expected[:, 2:], rtol=tolerance, atol=1e-9)


#: depthwise rows of at least a vector, four output rows at a time reading each input place once
#: (stationary_rows in tap_loops.cpp; the cosine's quotient in stationary_quotient_block): kernels
#: 3 to 7, dilated, rows not a multiple of four, widths of one vector, one and a half, and several,
#: and 3-D (rows of four across two planes fall back to the tap-by-tap blocks); the square kernels
#: at dilation 1 take the quotient's places written out (square_quotient_block) in float32 and float64
FOUR_ROWS = [
    ((2, 3, 13, 16), (3, 1, 7, 7), {"padding": 3, "groups": 3}),
    ((1, 2, 11, 37), (2, 1, 3, 3), {"padding": 1, "groups": 2}),
    ((1, 4, 10, 23), (4, 1, 5, 5), {"padding": 2, "groups": 4}),
    ((1, 2, 9, 40), (2, 1, 3, 3), {"padding": 2, "dilation": 2, "groups": 2}),
    ((1, 2, 6, 33), (4, 1, 3, 5), {"padding": (1, 0), "groups": 2}),
    ((1, 2, 3, 6, 17), (2, 1, 3, 3, 3), {"padding": 1, "groups": 2}),
]


#: max_plus not in bfloat16, whose coarse values tie: amax splits a tie's gradient, the loops give
#: it to the first tap (test_a_tropical_tie_goes_to_the_first_tap)
FOUR_ROWS_VARIANTS = [
    (name, dtype)
    for name in ("dot", "l1", "max_plus", "cosine")
    for dtype in (torch.float32, torch.float64, torch.bfloat16)
    if (name, dtype) != ("max_plus", torch.bfloat16)
]


@pytest.mark.parametrize(("name", "dtype"), FOUR_ROWS_VARIANTS, ids=str)
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "arguments"), FOUR_ROWS, ids=["7x7", "3x3", "5x5", "dilated", "multiplier-2", "3d"]
)
def test_rows_of_four_read_once_give_the_formulas_numbers(x_shape, w_shape, arguments, name, dtype):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(x_shape, generator=generator).to(dtype).requires_grad_()
    w = torch.randn(w_shape, generator=generator).to(dtype).requires_grad_()
    b = torch.randn(w_shape[0], generator=generator).to(dtype)
    variant, groups = resolve_variant(name), arguments["groups"]
    padding, dilation = arguments["padding"], arguments.get("dilation", 1)
    path = "tap products" if name == "cosine" else "tap loops"
    assert plan_conv(x, w, variant, 1, padding, dilation, groups, "zeros", None).path == path
    output = anyconv.generalized_conv(x, w, name, b, **arguments)
    grad = torch.randn(output.shape, generator=generator).to(dtype)
    got = torch.autograd.grad(output, (x, w), grad)
    x64, w64 = (tensor.detach().double().requires_grad_() for tensor in (x, w))
    expected = naive_generalized_conv(x64, w64, name, b.double(), **arguments)
    tolerance = {"rtol": 2e-2, "atol": 5e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(output, expected.to(dtype), **tolerance)
    for got_grad, expected_grad in zip(got, torch.autograd.grad(expected, (x64, w64), grad.double())):
        torch.testing.assert_close(got_grad, expected_grad.to(dtype), **tolerance)


def test_a_1d_layer_takes_the_filter_blocks_up_to_its_own_channel_limit():
    from anyconv.engine.tap_loops import MAX_BLOCKED_CHANNELS_1D

    x = torch.randn(1, MAX_BLOCKED_CHANNELS_1D, 40)
    # 5 taps: past the columns' 1-D exception of at most 3
    assert tap_loops_fit(resolve_variant("dot"), x, torch.randn(8, MAX_BLOCKED_CHANNELS_1D, 5), 1)
    wide = torch.randn(1, MAX_BLOCKED_CHANNELS_1D + 1, 40)
    assert not tap_loops_fit(resolve_variant("dot"), wide, torch.randn(8, MAX_BLOCKED_CHANNELS_1D + 1, 5), 1)
    # a 2-D layer keeps the 2-D limit
    square = torch.randn(1, MAX_BLOCKED_CHANNELS_1D, 6, 6)
    assert not tap_loops_fit(resolve_variant("dot"), square, torch.randn(8, MAX_BLOCKED_CHANNELS_1D, 3, 3), 1)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "name", "taken"),
    [
        ((1, 32, 28, 28), (8, 16, 3, 3), "dot", True),
        ((1, 32, 800), (8, 16, 3), "dot", True),
        ((1, 32, 27, 28), (8, 16, 3, 3), "dot", False),
        ((1, 48, 28, 28), (8, 24, 3, 3), "dot", False),
        ((1, 48, 6, 6), (8, 24, 3, 3), "max_plus", True),
        ((1, 50, 6, 6), (10, 25, 3, 3), "l1", False),
    ],
    ids=["dot-16-at-784", "dot-16-1d", "dot-16-below-784", "dot-24", "max_plus-24", "l1-25"],
)
def test_grouped_layers_take_the_loops_up_to_the_variants_channel_limit(x_shape, w_shape, name, taken):
    # dot to 16 channels per group on inputs of 784 positions or more, the distances to 24 at any
    # size, sum the taps (the loops lay out each group); with more, the loops take the filters in
    # blocks; either way the formula's numbers, forward and gradients
    x, w, b = case_tensors({"x": x_shape, "w": w_shape})
    arguments = {"padding": 1, "groups": 2}
    variant = resolve_variant(name)
    plan = plan_conv(x, w, variant, 1, 1, 1, 2, "zeros", None)
    assert plan.path == "tap loops"
    assert _lays_out(variant, 2, w_shape[1], math.prod(x_shape[2:])) == taken
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    naive_inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    output = anyconv.generalized_conv(*inputs[:2], name, inputs[2], **arguments)
    expected = naive_generalized_conv(*naive_inputs[:2], name, naive_inputs[2], **arguments)
    torch.testing.assert_close(output, expected)
    grad = torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(2))
    for got, want in zip(
        torch.autograd.grad(output, inputs, grad), torch.autograd.grad(expected, naive_inputs, grad)
    ):
        torch.testing.assert_close(got, want)
