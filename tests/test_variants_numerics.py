# ruff: noqa: E501  (one case per line: the tables read as tables)
"""Issue #14's numeric findings, one test each: NaN and inf as the naive formula, accuracy far from zero.

Each variant on the native and the eager path (``ANYCONV_NATIVE=0``) against the naive float64
formula of ``variant_reference``; the native tropical backward on an all-NaN field runs in a
subprocess, since a write out of bounds there crashes the interpreter.
"""

import os
import subprocess
import sys

import pytest
import torch
from conftest import take_views_everywhere
from hypothesis import given, settings
from hypothesis import strategies as st
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine import contraction, ops
from anyconv.variants import L2, RBF, fused, squared

NAN, INF = float("nan"), float("inf")


def _same_specials(got, expected, **tolerance):
    """NaN, +inf and -inf at the same places; the finite values close."""
    assert torch.equal(got.isnan(), expected.isnan()), (got, expected)
    assert torch.equal(got == INF, expected == INF), (got, expected)
    assert torch.equal(got == -INF, expected == -INF), (got, expected)
    finite = expected.isfinite()
    torch.testing.assert_close(got[finite], expected[finite].to(got.dtype), **tolerance)


#: (variant, options, field values, filter values): 1-D, one field of three taps, two filters
SPECIAL_CASES = [
    ("max_plus", {}, [1.0, NAN, 2.0], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    ("min_plus", {}, [1.0, NAN, 2.0], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    ("max_plus", {}, [NAN, NAN, NAN], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    ("max_plus", {}, [INF, 1.0, 2.0], [[-INF, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    ("min_plus", {}, [INF, 1.0, 2.0], [[INF, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    # finite, but their sum overflows: the check for finite inputs must not be fooled
    ("max_plus", {}, [3e38, 3e38, 1.0], [[0.0, -1e38, 0.0], [1.0, 1.0, NAN]]),
    ("min_plus", {}, [-3e38, -3e38, 1.0], [[0.0, 1e30, 0.0], [1.0, 1.0, 1.0]]),
    ("lp", {"p": 3.0}, [1.0, NAN, 2.0], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    ("lp", {"p": 0.5}, [1.0, NAN, 2.0], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    ("lp", {"p": 2.0}, [INF, 1.0, 2.0], [[0.0, 0.0, 0.0], [INF, 1.0, 1.0]]),
    ("l1", {}, [1.0, NAN, 2.0], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    ("l1", {}, [INF, 1.0, 2.0], [[0.0, 0.0, 0.0], [INF, 1.0, 1.0]]),
    ("l2", {}, [INF, 1.0, 2.0], [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]),
    ("l2", {}, [-INF, 1.0, 2.0], [[0.0, 0.0, 0.0], [INF, 0.0, 1.0]]),
    ("l2", {}, [1.0, NAN, 2.0], [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]),
    ("rbf", {"gamma": 0.5}, [INF, 1.0, 2.0], [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]),
    ("rbf", {"gamma": 0.5}, [1.0, 2.0, 3.0], [[0.0, -INF, 0.0], [INF, INF, 1.0]]),
    ("dot", {}, [INF, 1.0, 2.0], [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]),
    ("cosine", {}, [1.0, NAN, 2.0], [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]),
    ("polynomial", {}, [1.0, NAN, 2.0], [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]),
]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    ("variant", "options", "field", "filters"),
    SPECIAL_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(SPECIAL_CASES)],
)
def test_nan_and_inf_as_the_naive_formula(variant, options, field, filters, dtype, path):
    input = torch.tensor(field, dtype=dtype).view(1, 1, 3)
    weight = torch.tensor(filters, dtype=dtype).view(2, 1, 3)
    expected = naive_generalized_conv(input.double(), weight.double(), variant, **options)
    _same_specials(anyconv.generalized_conv(input, weight, variant, **options), expected)


_ALL_NAN_BACKWARD = """
import torch, anyconv
from anyconv.engine import contraction, ops
from anyconv.variants import L2, RBF, fused
input = torch.full((2, 3, 9), float("nan"), dtype=torch.{dtype}, requires_grad=True)
weight = torch.randn(40, 3, 3, dtype=torch.{dtype}, requires_grad=True)
output = anyconv.generalized_conv(input, weight, "{variant}")
output.sum().backward()
assert fused.last_path() == "native", fused.last_path()
print("ok")
"""


@pytest.mark.skipif(not fused.native_kernels_available(), reason="no C++ compiler here")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", ["max_plus", "min_plus"])
def test_native_tropical_backward_survives_an_all_nan_field(variant, dtype):
    script = _ALL_NAN_BACKWARD.format(variant=variant, dtype=dtype)
    env = {**os.environ, "ANYCONV_NATIVE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("variant", ["max_plus", "min_plus"])
def test_tropical_gradient_of_a_nan_field_goes_to_its_first_nan_tap(variant, path):
    input = torch.tensor([[[1.0, NAN, 2.0, NAN]]], requires_grad=True)
    weight = torch.zeros(3, 1, 4, requires_grad=True)
    output = anyconv.generalized_conv(input, weight, variant)
    assert output.isnan().all()
    output.sum().backward()
    sign = -1 if variant == "min_plus" else 1
    assert torch.equal(input.grad, torch.tensor([[[0.0, 3.0, 0.0, 0.0]]]))
    assert torch.equal(weight.grad, torch.tensor([[[0.0, sign * 1.0, 0.0, 0.0]]] * 3))


#: (variant, options): the L2 family, whose product form cancels far from zero
FAR_FROM_ZERO = [("l2", {}), ("rbf", {"gamma": 1.0}), ("rbf", {"gamma": 10.0})]

#: (channels, where the special values go): the native loops check a few fields at a time, or,
#: with more taps than one sweep holds (1100 > 1024 in float32), all of a thread's fields at once
POISONED_AMONG_MANY = [
    (5, "one field"),
    (5, "one filter"),
    (1100, "one field"),
]


@pytest.mark.parametrize("variant", ["max_plus", "min_plus"])
@pytest.mark.parametrize(("channels", "poisoned"), POISONED_AMONG_MANY)
def test_tropical_special_values_among_many_finite_fields(variant, channels, poisoned, path):
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(1, channels, 70, generator=generator)
    weight = torch.randn(20, channels, 1, generator=generator)
    if poisoned == "one field":
        input[0, :2, 37] = torch.tensor([NAN, INF])
    else:
        weight[3, 1, 0] = NAN
    expected = naive_generalized_conv(input.double(), weight.double(), variant)
    input.requires_grad_()
    weight.requires_grad_()
    output = anyconv.generalized_conv(input, weight, variant)
    _same_specials(output, expected)
    assert expected.isnan().any() and expected[expected.isfinite()].numel() > 1000
    # the gradients: the first winning tap of each (field, filter) takes it, NaN the first NaN tap
    output.backward(torch.ones_like(output))
    best = input.detach()[0].T[:, None, :] + (1 if variant == "max_plus" else -1) * weight.detach()[:, :, 0]
    winner = best.nan_to_num(nan=INF if variant == "max_plus" else -INF)
    winner = winner.argmax(-1) if variant == "max_plus" else winner.argmin(-1)
    counts = torch.zeros(70, channels).index_put_(
        (torch.arange(70)[:, None].expand(70, 20), winner), torch.ones(70, 20), accumulate=True
    )
    torch.testing.assert_close(input.grad[0].T, counts)


@pytest.mark.parametrize("blocks", ["one-block", "blocks"])
@pytest.mark.parametrize("offset", [1000.0, 128.0, -5000.0], ids=lambda o: f"offset{o:g}")
@pytest.mark.parametrize(
    ("variant", "options"), FAR_FROM_ZERO, ids=[c[0] + str(c[1].get("gamma", "")) for c in FAR_FROM_ZERO]
)
def test_l2_family_in_float32_does_not_cancel_far_from_zero(variant, options, offset, blocks, monkeypatch):
    # pixels near the offset, filters near the same pixels: distances of order 0.01
    if blocks == "blocks":
        # the fields centred a few rows at a time, as with many taps and few outputs
        monkeypatch.setattr(squared, "MIN_CENTRED_BLOCK", 1)
        assert len(squared.centred_blocks(2 * 36, 27, 5)) > 1
    generator = torch.Generator().manual_seed(0)
    input = offset + torch.rand(2, 3, 8, 8, generator=generator)
    weight = offset + 0.5 + 0.02 * torch.randn(5, 3, 3, 3, generator=generator)
    input = input.float()
    weight = weight.float()
    expected = naive_generalized_conv(input.double(), weight.double(), variant, **options)
    naive32 = naive_generalized_conv(input, weight, variant, **options).double()
    got = anyconv.generalized_conv(input, weight, variant, **options).double()
    # within a small multiple of the naive float32 formula's own error, or of its rounding bound:
    # epsilon times the output, times the condition number gamma * d = |log y| of rbf's exp
    condition = 1 + (expected.abs().log().abs() if variant == "rbf" else 0)
    allowed = 4 * (naive32 - expected).abs() + 8 * torch.finfo(torch.float32).eps * expected.abs() * condition
    assert ((got - expected).abs() <= allowed + 1e-30).all(), (got - expected).abs().max()


class _UnregisteredL2(L2):
    """``l2`` under another name: the engine's plain autograd Function, not the custom op."""

    name = "unregistered_l2"


class _UnregisteredRBF(RBF):
    """``rbf`` under another name, as above."""

    name = "unregistered_rbf"


#: (variant as the call names it, the reference's name, options)
GRADIENTS_FAR_FROM_ZERO = [
    pytest.param("l2", "l2", {}, id="l2-op"),
    pytest.param("rbf", "rbf", {"gamma": 1.0}, id="rbf-op"),
    pytest.param(_UnregisteredL2, "l2", {}, id="l2-function"),
    pytest.param(_UnregisteredRBF, "rbf", {"gamma": 1.0}, id="rbf-function"),
]


@pytest.mark.parametrize("offset", [1000.0, -5000.0, 128.0], ids=lambda o: f"offset{o:g}")
@pytest.mark.parametrize("route", ["views", "fields", "fields-stride2", "fields-blocks"])
@pytest.mark.parametrize(("variant", "reference", "options"), GRADIENTS_FAR_FROM_ZERO)
def test_l2_family_float32_gradients_do_not_cancel_far_from_zero(
    variant, reference, options, route, offset, monkeypatch
):
    # d/dp of -|p - w|^2 is 2 (w - p): translation invariant, so data far from zero must not
    # cost the gradients more digits than the naive float32 formula loses
    if route == "views":
        take_views_everywhere(monkeypatch)
    if route == "fields-blocks":
        # the fields centred a few rows at a time, forward and backward (see centred_blocks)
        monkeypatch.setattr(squared, "MIN_CENTRED_BLOCK", 1)
        assert len(squared.centred_blocks(2 * 49, 36, 6)) > 1
    # the ops cache their plans, views or not: plan afresh, and see which route the backward took
    ops.op_plan.cache_clear()
    routes = []
    for name in ("tap_gradients", "field_gradients"):
        original = getattr(contraction, name)
        monkeypatch.setattr(
            contraction,
            name,
            lambda *args, name=name, original=original, **kwargs: (
                routes.append(name),
                original(*args, **kwargs),
            )[1],
        )
    stride = 2 if route == "fields-stride2" else 1
    generator = torch.Generator().manual_seed(5)
    input = (offset + torch.rand(2, 4, 9, 9, generator=generator)).float()
    weight = (offset + 0.5 + 0.1 * torch.randn(6, 4, 3, 3, generator=generator)).float()
    grad = torch.randn(2, 6, *((7, 7) if stride == 1 else (4, 4)), generator=generator)
    answers = []
    for function, dtype, name in (
        (naive_generalized_conv, torch.float64, reference),
        (naive_generalized_conv, torch.float32, reference),
        (anyconv.generalized_conv, torch.float32, variant),
    ):
        leaves = input.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_()
        output = function(*leaves, name, stride=stride, **options)
        answers.append(torch.autograd.grad(output, leaves, grad.to(dtype)))
    for which, expected, naive32, got in zip(("input", "weight"), *answers):
        # a small multiple of the naive float32 formula's own error, or of float32 rounding
        naive_error = (naive32.double() - expected).abs().max()
        rounding = torch.finfo(torch.float32).eps * expected.abs().max()
        error = (got.double() - expected).abs().max()
        assert error <= 8 * max(naive_error, rounding), (which, error, naive_error, rounding)
    assert set(routes) == {"tap_gradients" if route == "views" else "field_gradients"}


def test_l2_issue_example_near_1000():
    generator = torch.Generator().manual_seed(3)
    input = (1000 + torch.rand(1, 1, 4, 4, generator=generator)).float()
    weight = input[:, :, :3, :3] + 0.01 * torch.randn(1, 1, 3, 3, generator=generator)
    expected = naive_generalized_conv(input.double(), weight.double(), "l2")
    got = anyconv.generalized_conv(input, weight, "l2")
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_sharpened_cosine_learnable_exponent_below_one_zero_fields_keep_finite_weight_gradients():
    # float64: the learnable and the fixed exponent take different float32 roundings
    generator = torch.Generator().manual_seed(0)
    input = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    input[:, :, 2:, 2:] = torch.rand(1, 2, 3, 3, dtype=torch.float64, generator=generator)
    exponent = torch.full((4,), 0.5, dtype=torch.float64)
    layer = anyconv.nn.GeneralizedConv2d(
        2, 4, 3, padding=1, variant="sharpened_cosine", exponent=exponent, q=0.1, dtype=torch.float64
    )
    layer.weight.data.normal_(generator=generator)
    layer(input).sum().backward()
    assert layer.weight.grad.isfinite().all()
    assert layer.variant_options["exponent"].grad.isfinite().all()
    # a fixed exponent below 1 takes the same gradient (0 at s = 0)
    fixed = anyconv.nn.GeneralizedConv2d(
        2, 4, 3, padding=1, variant="sharpened_cosine", exponent=0.5, q=0.1, dtype=torch.float64
    )
    fixed.weight.data.copy_(layer.weight.data)
    fixed.bias.data.copy_(layer.bias.data)
    fixed(input).sum().backward()
    torch.testing.assert_close(layer.weight.grad, fixed.weight.grad)


#: variants whose gradients follow autograd through the formula, NaN included (the tropical
#: ones send a NaN output's gradient to one tap instead: see the test above)
SMOOTH = ["dot", "l1", "l2", "lp", "rbf", "polynomial", "cosine", "sharpened_cosine"]


@pytest.mark.parametrize("views", [False, True], ids=["fields", "views"])
@pytest.mark.parametrize("variant", SMOOTH)
def test_nan_reaches_the_gradients_where_the_formulas_autograd_puts_it(variant, views, path, monkeypatch):
    if views:
        take_views_everywhere(monkeypatch)
    generator = torch.Generator().manual_seed(4)
    input = torch.randn(1, 2, 7, dtype=torch.float64, generator=generator)
    input[0, 1, 3] = NAN
    weight = torch.randn(3, 2, 3, dtype=torch.float64, generator=generator)
    weight[2, 0, 1] = NAN
    grad = torch.randn(1, 3, 5, dtype=torch.float64, generator=generator)
    answers = []
    for function in (anyconv.generalized_conv, naive_generalized_conv):
        leaves = input.clone().requires_grad_(), weight.clone().requires_grad_()
        answers.append(torch.autograd.grad(function(*leaves, variant), leaves, grad))
    for got, expected in zip(*answers):
        _same_specials(got, expected)


@settings(max_examples=60, deadline=None)
@given(
    fields_scale=st.floats(-3, 3),
    filters_scale=st.floats(-3, 3),
    offset=st.sampled_from([0.0, 1.0, -300.0, 1e4]),
    copies=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_squared_distances_at_any_scale_as_the_naive_float64_formula(
    fields_scale, filters_scale, offset, copies, seed
):
    # fields and filters of scales 1e-3 to 1e3 apart, far from zero or not, some fields copies of
    # filters: centring and the pair check keep every distance within a few units of rounding of
    # the centred norms it came from
    generator = torch.Generator().manual_seed(seed)
    fields = offset + 10**fields_scale * torch.randn(2, 40, 27, generator=generator, dtype=torch.float64)
    filters = offset + 10**filters_scale * torch.randn(2, 6, 27, generator=generator, dtype=torch.float64)
    if copies:
        fields[:, :6] = filters + 1e-3 * 10**filters_scale * torch.randn(
            2, 6, 27, generator=generator, dtype=torch.float64
        )
    fields, filters = fields.float(), filters.float()
    got = squared.squared_distances(fields, filters).double()
    fields, filters = fields.double(), filters.double()
    expected = (fields[:, :, None] - filters[:, None]).square().sum(-1)
    centre = filters.mean(1, keepdim=True)
    norms = (fields - centre).square().sum(-1, keepdim=True) + (filters - centre).square().sum(-1)[:, None]
    assert ((got - expected).abs() <= 64 * torch.finfo(torch.float32).eps * norms).all()


def test_l2_gradient_of_an_infinite_filter_entry_sums_the_output_gradients_first():
    # the product form's convention (docs/numerics.md): -inf * sign(w) * sign(sum g) at the entry,
    # where the formula's term-by-term sum of +-inf is NaN; every other entry the formula's
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 140, 5, 6, dtype=torch.float64, generator=generator)
    w = torch.randn(8, 140, 3, 3, dtype=torch.float64, generator=generator)
    w[2, 5, 1, 1], w[3, 7, 0, 2] = float("inf"), -float("inf")
    mine = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    naive = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    output = anyconv.generalized_conv(*mine, "l2", padding=1)
    grad = torch.randn(output.shape, dtype=torch.float64, generator=generator)
    got = torch.autograd.grad(output, mine, grad)
    want = torch.autograd.grad(naive_generalized_conv(*naive, "l2", padding=1), naive, grad)
    for filter, entry in ((2, (5, 1, 1)), (3, (7, 0, 2))):
        sign = -torch.sign(w[filter][entry]) * torch.sign(grad[0, filter].sum())
        assert got[1][filter][entry] == sign * float("inf") and want[1][filter][entry].isnan()
        got[1][filter][entry] = want[1][filter][entry] = 0.0
    for value, reference in zip(got, want):
        torch.testing.assert_close(value, reference, equal_nan=True)
