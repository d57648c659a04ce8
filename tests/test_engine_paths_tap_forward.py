"""The tap-forward path (engine/paths.py ``_tap_forward``): on a dense layer whose filter blocks the
loops take, a call of ``rbf``, ``polynomial`` or the cosines that records a graph takes its forward
from the tap products (``tap_products_forward``) and its backward from the fields path.

Against the naive float64 formulas and the fields path, forward, gradients and second derivatives,
in 1-D to 3-D with stride, dilation, padding modes and channels-last; the path taken and where it
is not; NaN and inf; data far from zero; a bfloat16 cosine; the output saved for the backward
guarded against in-place changes.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradgradcheck
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine import paths
from anyconv.engine.plan import clear_plans
from anyconv.engine.tap_products import tap_forward_fits
from anyconv.variants import resolve_variant

#: x shape, weight shape, arguments: one group, at least four filters (the loops' filter blocks)
CASES = [
    {"id": "3x3-padding-1", "x": (2, 5, 9, 8), "w": (6, 5, 3, 3), "with": {"padding": 1}},
    {"id": "stride-2", "x": (2, 4, 9, 11), "w": (8, 4, 3, 3), "with": {"padding": 1, "stride": 2}},
    {"id": "dilation-2", "x": (1, 3, 11, 10), "w": (5, 3, 3, 3), "with": {"padding": 2, "dilation": 2}},
    {"id": "7x7-stride-2-stem", "x": (1, 3, 17, 15), "w": (4, 3, 7, 7), "with": {"padding": 3, "stride": 2}},
    {"id": "per-side-padding", "x": (1, 4, 7, 8), "w": (4, 4, 3, 2), "with": {"padding": ((2, 0), (0, 1))}},
    {
        "id": "reflect",
        "x": (1, 4, 7, 7),
        "w": (4, 4, 3, 3),
        "with": {"padding": 1, "padding_mode": "reflect"},
    },
    {"id": "1d-k5", "x": (2, 6, 30), "w": (5, 6, 5), "with": {"padding": 2}},
    {"id": "3d", "x": (1, 3, 5, 6, 5), "w": (4, 3, 3, 3, 3), "with": {"padding": 1, "stride": (1, 2, 1)}},
]
IDS = [case["id"] for case in CASES]

#: (id, variant name, options): numbers only (a tensor option leaves the call to the fields path)
VARIANTS = [
    ("rbf", "rbf", {}),
    ("rbf-gamma", "rbf", {"gamma": 0.3}),
    ("polynomial-odd", "polynomial", {"degree": 3, "c": 0.5}),
    ("polynomial-even", "polynomial", {"degree": 2, "c": -0.5}),
    ("sharpened_cosine", "sharpened_cosine", {}),
    ("sharpened_cosine-e3-q0.1", "sharpened_cosine", {"exponent": 3.0, "q": 0.1}),
]
VARIANT_IDS = [variant[0] for variant in VARIANTS]

pytestmark = pytest.mark.skipif(
    not tap_forward_fits(resolve_variant("rbf"), torch.ones(1, 4, 8, 8), torch.ones(4, 4, 3, 3), 1),
    reason="the tap loops are not compiled here (no C++ compiler, or ANYCONV_NATIVE=0)",
)


def _tensors(case, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(case["x"], generator=generator, dtype=dtype)
    # filters of a size that keeps rbf's exp and the polynomial's power away from 0 and inf
    w = torch.randn(case["w"], generator=generator, dtype=dtype) / case["w"][1]
    b = torch.randn(case["w"][0], generator=generator, dtype=dtype)
    return x, w, b


@pytest.fixture
def taken(monkeypatch):
    """The names of the variants whose forward the tap products computed for the fields path."""
    calls = []
    forward = paths.tap_products_forward

    def spy(variant, *arguments):
        calls.append(variant.name)
        return forward(variant, *arguments)

    monkeypatch.setattr(paths, "tap_products_forward", spy)
    clear_plans()
    yield calls
    clear_plans()


def _gradients(output, inputs, seed=1):
    grad = torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(output, inputs, grad)


@pytest.mark.parametrize(("variant_id", "name", "options"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_gradients_equal_the_naive_formula(case, variant_id, name, options, taken):
    x, w, b = _tensors(case)
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    naive_inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    output = anyconv.generalized_conv(*inputs[:2], name, inputs[2], **case["with"], **options)
    assert taken == [name]
    expected = naive_generalized_conv(*naive_inputs[:2], name, naive_inputs[2], **case["with"], **options)
    torch.testing.assert_close(output, expected)
    for got, want in zip(_gradients(output, inputs), _gradients(expected, naive_inputs)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("variant_id", "name", "options"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", CASES[:3], ids=IDS[:3])
def test_float32_forward_and_gradients_equal_the_fields_path(case, variant_id, name, options, monkeypatch):
    x, w, b = _tensors(case, torch.float32)

    def run():
        inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
        output = anyconv.generalized_conv(*inputs[:2], name, inputs[2], **case["with"], **options)
        return (output.detach(), *_gradients(output, inputs))

    clear_plans()
    mine = run()
    with monkeypatch.context() as patch:
        patch.setattr(paths, "tap_forward_fits", lambda *arguments: False)
        clear_plans()
        fields = run()
    clear_plans()
    for got, expected in zip(mine, fields):
        # float32 rounding of sums whose terms reach the largest value: a weight gradient of
        # order 0.1 sums outputs of order 100 (the polynomial's cube), and the two paths sum in
        # different orders (and fuse multiply-adds differently on different instruction sets)
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * scale)


def test_the_path_is_taken_only_where_it_fits(taken):
    x, w = _tensors(CASES[0])[:2]
    x.requires_grad_()
    anyconv.generalized_conv(x, w, "rbf", padding=1)
    assert taken == ["rbf"]
    # tensors that record nothing with grad mode on: the forward alone, no graph
    output = anyconv.generalized_conv(x.detach(), w, "polynomial", padding=1)
    assert taken == ["rbf", "polynomial"] and output.grad_fn is None
    # with grad mode off, the tap products' own path; a tensor option, grouped layers and the
    # variants the loops take themselves: not this path
    with torch.no_grad():
        anyconv.generalized_conv(x, w, "rbf", padding=1)
    anyconv.generalized_conv(x, w, "rbf", padding=1, gamma=torch.full((6,), 0.2, dtype=x.dtype))
    anyconv.generalized_conv(x[:, :4], w[:, :2], "rbf", padding=1, groups=2)
    anyconv.generalized_conv(x, w, "l2", padding=1)
    anyconv.generalized_conv(x, w, "dot", padding=1)
    assert taken == ["rbf", "polynomial"]
    assert not tap_forward_fits(resolve_variant("rbf"), x, w[:3], 1)  # fewer filters than a block


def test_torchs_machinery_takes_the_custom_operator(taken):
    x, w = _tensors(CASES[0], torch.float32)[:2]
    x.requires_grad_()
    expected = naive_generalized_conv(x.double(), w.double(), "rbf", padding=1)
    compiled = torch.compile(
        lambda x, w: anyconv.generalized_conv(x, w, "rbf", padding=1), fullgraph=True, backend="aot_eager"
    )
    torch.testing.assert_close(compiled(x, w), expected.float(), rtol=1e-4, atol=1e-5)
    assert taken == []


@pytest.mark.parametrize(("variant_id", "name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_channels_last_input_gives_a_channels_last_output(variant_id, name, options, taken):
    x, w, b = _tensors(CASES[1])
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    output = anyconv.generalized_conv(x, w, name, b, **CASES[1]["with"], **options)
    assert taken == [name] and output.is_contiguous(memory_format=torch.channels_last)
    naive_x = x.detach().contiguous().requires_grad_()
    expected = naive_generalized_conv(naive_x, w, name, b, **CASES[1]["with"], **options)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(_gradients(output, x)[0], _gradients(expected, naive_x)[0])


@pytest.mark.parametrize(
    ("name", "options"),
    [("rbf", {"gamma": 0.2}), ("polynomial", {"degree": 2}), ("polynomial", {"degree": 3, "c": 0.5})],
    ids=lambda value: str(value),
)
def test_gradgradcheck(name, options, taken):
    generator = torch.Generator().manual_seed(3)
    x = (torch.randn(1, 3, 5, 4, dtype=torch.float64, generator=generator) * 0.5).requires_grad_()
    w = (torch.randn(4, 3, 3, 2, dtype=torch.float64, generator=generator) * 0.3).requires_grad_()
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def function(x, w, b):
        return anyconv.generalized_conv(x, w, name, b, padding=1, **options)

    assert gradgradcheck(function, (x, w, b))
    assert name in taken


@pytest.mark.parametrize("name", ["rbf", "polynomial", "sharpened_cosine"])
@pytest.mark.parametrize("poisoned", ["input", "weight"])
def test_nan_and_inf_propagate_as_the_formula(name, poisoned, taken):
    x, w, b = _tensors(CASES[0])
    if poisoned == "input":
        x[0, 1, 3, 4] = float("nan")
        x[1, 2, 0, 0] = float("inf")
        x[0, 4, 6, 5] = float("-inf")
    else:
        w[1, 2, 1, 1] = float("nan")
        w[5, 0, 0, 2] = float("inf")
    expected = naive_generalized_conv(x, w, name, b, padding=1)
    got = anyconv.generalized_conv(x, w.requires_grad_(), name, b, padding=1)
    assert taken == [name]
    assert torch.equal(got.isnan(), expected.isnan())
    torch.testing.assert_close(got.detach(), expected, equal_nan=True)


def test_rbf_on_data_far_from_zero_does_not_cancel(taken):
    # the loops' own squared distance, never |p|^2 - 2 p.w + |w|^2
    generator = torch.Generator().manual_seed(4)
    x = (1000 + torch.rand(1, 4, 8, 8, generator=generator) * 1e-2).requires_grad_()
    w = 1000 + torch.rand(4, 4, 3, 3, generator=generator) * 1e-2
    expected = naive_generalized_conv(x.double(), w.double(), "rbf", gamma=10.0)
    torch.testing.assert_close(
        anyconv.generalized_conv(x, w, "rbf", gamma=10.0), expected.float(), rtol=1e-4, atol=1e-6
    )
    assert taken == ["rbf"]


def test_an_in_place_change_of_the_saved_output_is_refused(taken):
    x, w = _tensors(CASES[0])[:2]
    output = anyconv.generalized_conv(x, w.requires_grad_(), "rbf", padding=1)
    output.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        output.sum().backward()
    assert taken == ["rbf"]


@pytest.mark.parametrize(("variant_id", "name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_an_in_place_activation_after_the_layer_gives_the_formulas_numbers(variant_id, name, options, taken):
    # the output is no view made inside the Function, so autograd lets ReLU(inplace=True) change it
    x, w, b = _tensors(CASES[0])
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    naive_inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    output = torch.relu_(anyconv.generalized_conv(*inputs[:2], name, inputs[2], padding=1, **options))
    expected = naive_generalized_conv(*naive_inputs[:2], name, naive_inputs[2], padding=1, **options).relu()
    assert taken == [name]
    torch.testing.assert_close(output, expected)
    for got, want in zip(_gradients(output, inputs), _gradients(expected, naive_inputs)):
        torch.testing.assert_close(got, want)


def test_a_bfloat16_cosine_takes_the_path_within_bfloat16s_error(taken):
    # the tap products keep the float cosine's recorded calls (loops_cosine); a bfloat16 one comes here
    x, w, _ = _tensors(CASES[0])
    mine = [x.bfloat16().requires_grad_(), w.bfloat16().requires_grad_()]
    exact = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    output = anyconv.generalized_conv(*mine, "cosine", padding=1)
    expected = naive_generalized_conv(*exact, "cosine", padding=1)
    assert taken == ["cosine"] and output.dtype == torch.bfloat16
    torch.testing.assert_close(output.double(), expected, rtol=0, atol=2**-7)
    grad = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for got, want in zip(
        torch.autograd.grad(output, mine, grad.bfloat16()), torch.autograd.grad(expected, exact, grad)
    ):
        assert (got.double() - want).abs().max() <= 2**-6 * want.abs().max()
