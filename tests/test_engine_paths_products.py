"""The tap-products path (engine/tap_products.py): the product-form variants on few channels per group.

Every product-form variant and option form, on depthwise, multiplier and grouped geometries with
stride, dilation and padding, against the naive float64 formulas and the fields path, forward,
gradients (learnable options included), second derivatives, NaN and inf, and the path taken.
"""

from __future__ import annotations

import pytest
import torch
from reference import case_tensors
from torch.autograd import gradcheck, gradgradcheck
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine import paths
from anyconv.engine.tap_products import tap_products_fit
from anyconv.variants import resolve_variant

#: x shape, weight shape, arguments (groups always given)
CASES = [
    {"id": "depthwise-3x3", "x": (2, 6, 9, 8), "w": (6, 1, 3, 3), "with": {"padding": 1, "groups": 6}},
    {
        "id": "depthwise-stride2",
        "x": (2, 4, 9, 9),
        "w": (4, 1, 3, 3),
        "with": {"padding": 1, "stride": 2, "groups": 4},
    },
    {
        "id": "depthwise-5x5-s2",
        "x": (1, 3, 11, 10),
        "w": (3, 1, 5, 5),
        "with": {"padding": 2, "stride": 2, "groups": 3},
    },
    {"id": "depthwise-7x7", "x": (1, 4, 10, 9), "w": (4, 1, 7, 7), "with": {"padding": 3, "groups": 4}},
    {"id": "multiplier-2", "x": (2, 3, 7, 7), "w": (6, 1, 3, 3), "with": {"padding": 1, "groups": 3}},
    {"id": "grouped-4-per-group", "x": (1, 8, 7, 6), "w": (8, 4, 3, 3), "with": {"padding": 1, "groups": 2}},
    {"id": "grouped-8-per-group", "x": (1, 16, 6, 6), "w": (4, 8, 3, 3), "with": {"groups": 2}},
    {
        "id": "dilated",
        "x": (1, 4, 11, 11),
        "w": (4, 1, 3, 3),
        "with": {"padding": 2, "dilation": 2, "groups": 4},
    },
    {
        "id": "stride-dilation-asymmetric",
        "x": (2, 4, 12, 9),
        "w": (4, 2, 2, 3),
        "with": {"stride": (2, 1), "dilation": (1, 2), "groups": 2},
    },
    {
        "id": "same-even-kernel",
        "x": (1, 4, 7, 8),
        "w": (4, 1, 4, 2),
        "with": {"padding": "same", "groups": 4},
    },
    {
        "id": "per-side-padding",
        "x": (1, 2, 6, 7),
        "w": (2, 1, 3, 3),
        "with": {"padding": ((2, 0), (0, 1)), "groups": 2},
    },
    {
        "id": "reflect",
        "x": (1, 4, 7, 7),
        "w": (4, 1, 3, 3),
        "with": {"padding": 1, "padding_mode": "reflect", "groups": 4},
    },
    {"id": "1d-k11", "x": (2, 4, 30), "w": (4, 1, 11), "with": {"padding": 5, "groups": 4}},
    {"id": "1d-stride3", "x": (1, 6, 20), "w": (6, 2, 4), "with": {"stride": 3, "groups": 3}},
    {"id": "3d-depthwise", "x": (1, 3, 5, 6, 5), "w": (3, 1, 3, 3, 3), "with": {"padding": 1, "groups": 3}},
    {
        "id": "3d-stride2-grouped",
        "x": (1, 4, 6, 5, 7),
        "w": (4, 2, 3, 2, 3),
        "with": {"stride": 2, "padding": 1, "groups": 2},
    },
    {"id": "output-of-one", "x": (3, 4, 3, 3), "w": (4, 1, 3, 3), "with": {"groups": 4}},
]
IDS = [case["id"] for case in CASES]


def _per_channel(low, high):
    """A per-output-channel option tensor for ``out_channels`` filters (built when the case is)."""
    return lambda out_channels: torch.linspace(low, high, out_channels, dtype=torch.float64)


#: (id, variant name, options): numbers, or callables of out_channels giving per-channel tensors
VARIANTS = [
    ("cosine", "cosine", {}),
    ("sharpened_cosine", "sharpened_cosine", {}),
    ("sharpened_cosine-e0.5-q0.1", "sharpened_cosine", {"exponent": 0.5, "q": 0.1}),
    ("sharpened_cosine-per-channel", "sharpened_cosine",
     {"exponent": _per_channel(1.0, 3.0), "q": _per_channel(0.01, 1.0)}),
    ("polynomial", "polynomial", {}),
    ("polynomial-even", "polynomial", {"degree": 2, "c": 0.5}),
    ("polynomial-per-channel", "polynomial", {"degree": 3, "c": _per_channel(-1.0, 1.0)}),
    ("rbf", "rbf", {}),
    ("rbf-per-channel", "rbf", {"gamma": _per_channel(0.05, 0.5)}),
]  # fmt: skip
VARIANT_IDS = [variant[0] for variant in VARIANTS]

pytestmark = pytest.mark.skipif(
    not tap_products_fit(resolve_variant("cosine"), torch.ones(1, 2, 3), torch.ones(2, 1, 3), 2),
    reason="the tap loops are not compiled here (no C++ compiler, or ANYCONV_NATIVE=0)",
)


def _options(options, out_channels, requires_grad=False):
    built = {}
    for name, value in options.items():
        value = value(out_channels) if callable(value) else value
        built[name] = value.clone().requires_grad_(requires_grad) if torch.is_tensor(value) else value
    return built


def _fields_path(monkeypatch, function):
    """Run ``function`` with this path turned off: the engine's fields path computes it."""
    with monkeypatch.context() as patch:
        patch.setattr(paths, "tap_products_fit", lambda *arguments: False)
        return function()


@pytest.fixture
def taken(monkeypatch):
    """The calls this path computed: a list that grows by one on each."""
    calls = []
    conv = paths.tap_products_conv

    def spy(*arguments):
        calls.append(arguments[3].name)
        return conv(*arguments)

    monkeypatch.setattr(paths, "tap_products_conv", spy)
    return calls


@pytest.mark.parametrize(("variant_id", "name", "options"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_gradients_equal_the_naive_formula(case, variant_id, name, options, taken):
    x, w, b = case_tensors(case)
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    naive_inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    mine, theirs = _options(options, w.shape[0], True), _options(options, w.shape[0], True)
    output = anyconv.generalized_conv(*inputs[:2], name, inputs[2], **case["with"], **mine)
    assert taken == [name]
    expected = naive_generalized_conv(*naive_inputs[:2], name, naive_inputs[2], **case["with"], **theirs)
    torch.testing.assert_close(output, expected)
    grad = torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(1))
    learnable = [value for value in mine.values() if torch.is_tensor(value)]
    naive_learnable = [value for value in theirs.values() if torch.is_tensor(value)]
    got = torch.autograd.grad(output, inputs + learnable, grad)
    want = torch.autograd.grad(expected, naive_inputs + naive_learnable, grad)
    for value, reference in zip(got, want):
        torch.testing.assert_close(value, reference)


@pytest.mark.parametrize(("variant_id", "name", "options"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", CASES[:7], ids=IDS[:7])
def test_gradients_equal_the_fields_path(case, variant_id, name, options, monkeypatch):
    x, w, b = case_tensors(case)
    # a zero field: the path's norms have the fields path's gradient there (its radial term is 0)
    x[0, :, :3] = 0

    def gradients():
        inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
        output = anyconv.generalized_conv(
            *inputs[:2], name, inputs[2], **case["with"], **_options(options, w.shape[0])
        )
        grad = torch.linspace(-1, 1, output.numel(), dtype=output.dtype).view(output.shape)
        return torch.autograd.grad(output, inputs, grad)

    for got, expected in zip(gradients(), _fields_path(monkeypatch, gradients)):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(("variant_id", "name", "options"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize(
    "case", [case for case in CASES if case["id"] in ("multiplier-2", "1d-stride3", "3d-stride2-grouped")]
)
def test_gradcheck(case, variant_id, name, options):
    x, w, b = (tensor.requires_grad_() for tensor in case_tensors(case))
    built = _options(options, w.shape[0], True)
    learnable = {option: value for option, value in built.items() if torch.is_tensor(value)}
    fixed = {option: value for option, value in built.items() if option not in learnable}

    def function(x, w, b, *values):
        return anyconv.generalized_conv(
            x, w, name, b, **case["with"], **fixed, **dict(zip(learnable, values))
        )

    assert gradcheck(function, (x, w, b, *learnable.values()))


#: no zero padding for the cosines (their norm has no second derivative at a zero field), and
#: sharpened_cosine's |s|^e has a second derivative only for e >= 2
SECOND_ORDER = [
    ("cosine", {}, {"groups": 4}),
    ("sharpened_cosine", {"exponent": 2.0, "q": 0.1}, {"groups": 2, "stride": 2}),
    ("polynomial", {"degree": 3, "c": 0.5}, {"groups": 4, "padding": 1}),
    ("polynomial", {"degree": 2}, {"groups": 2, "padding": 1, "dilation": 2}),
    # with one channel per group, l2's (and so rbf's) second derivative is NaN on every path today
    ("rbf", {"gamma": 0.05}, {"groups": 2, "padding": 1}),
]


@pytest.mark.parametrize(("name", "options", "arguments"), SECOND_ORDER, ids=lambda value: str(value))
def test_gradgradcheck(name, options, arguments, taken):
    generator = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 4, 6, 5, dtype=torch.float64, generator=generator) * 0.5).requires_grad_()
    w = torch.randn(4, 4 // arguments["groups"], 3, 2, dtype=torch.float64, generator=generator)
    w, b = (w * 0.5).requires_grad_(), torch.randn(4, dtype=torch.float64, requires_grad=True)

    def function(x, w, b):
        return anyconv.generalized_conv(x, w, name, b, **arguments, **options)

    assert gradgradcheck(function, (x, w, b))
    assert name in taken


@pytest.mark.parametrize("name", ["cosine", "sharpened_cosine", "polynomial", "rbf"])
@pytest.mark.parametrize("poisoned", ["input", "weight"])
def test_nan_and_inf_propagate_as_the_formula(name, poisoned):
    case = CASES[5]
    x, w, b = case_tensors(case)
    if poisoned == "input":
        x[0, 1, 3, 4] = float("nan")
        x[0, 6, 0, 0] = float("inf")
        x[0, 2, 6, 5] = float("-inf")
    else:
        w[1, 2, 1, 1] = float("nan")
        w[5, 0, 0, 2] = float("inf")
    expected = naive_generalized_conv(x, w, name, b, **case["with"])
    got = anyconv.generalized_conv(x, w, name, b, **case["with"])
    assert torch.equal(got.isnan(), expected.isnan())
    torch.testing.assert_close(got, expected, equal_nan=True)


@pytest.mark.parametrize(("variant_id", "name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_float32_matches_float64(variant_id, name, options):
    case = CASES[5]
    x, w, b = case_tensors(case)
    built = _options(options, w.shape[0])
    expected = anyconv.generalized_conv(x, w, name, b, **case["with"], **built)
    as_float = {option: value.float() if torch.is_tensor(value) else value for option, value in built.items()}
    got = anyconv.generalized_conv(x.float(), w.float(), name, b.float(), **case["with"], **as_float)
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-4)


def test_data_far_from_zero_does_not_cancel():
    # rbf comes from the loops' own squared distance, never from |p|^2 - 2 p.w + |w|^2
    x = 1000 + torch.rand(1, 4, 6, 6) * 1e-2
    w = 1000 + torch.rand(4, 1, 3, 3) * 1e-2
    expected = naive_generalized_conv(x.double(), w.double(), "rbf", gamma=10.0, groups=4)
    torch.testing.assert_close(
        anyconv.generalized_conv(x, w, "rbf", gamma=10.0, groups=4), expected.float(), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("budget", [1, 10**9], ids=["a-sample-per-chunk", "one-chunk"])
def test_chunks_of_samples_give_the_same_numbers(budget):
    x, w, b = case_tensors({"x": (5, 4, 6, 6), "w": (4, 1, 3, 3)})
    output = anyconv.generalized_conv(x, w, "cosine", b, padding=1, groups=4, memory_budget=budget)
    torch.testing.assert_close(output, naive_generalized_conv(x, w, "cosine", b, padding=1, groups=4))


def test_unbatched_input():
    x, w, b = case_tensors(CASES[0])
    torch.testing.assert_close(
        anyconv.generalized_conv(x[0], w, "sharpened_cosine", b, padding=1, groups=6),
        naive_generalized_conv(x[:1], w, "sharpened_cosine", b, padding=1, groups=6)[0],
    )


def test_other_variants_and_dense_calls_take_other_paths():
    x = torch.randn(1, 4, 5, 5)
    assert not tap_products_fit(resolve_variant("l1"), x, torch.randn(4, 1, 3, 3), 4)
    # dense: where the loops take dot and l2 in filter blocks, with gradients off, and the cosine
    # with gradients on in an eager float call
    assert tap_products_fit(resolve_variant("cosine"), x, torch.randn(4, 4, 3, 3), 1)
    assert not tap_products_fit(resolve_variant("rbf"), x, torch.randn(4, 4, 3, 3), 1)
    assert not tap_products_fit(
        resolve_variant("cosine"), x.bfloat16(), torch.randn(4, 4, 3, 3).bfloat16(), 1
    )
    with torch.no_grad():
        assert tap_products_fit(resolve_variant("cosine"), x, torch.randn(4, 4, 3, 3), 1)
        assert tap_products_fit(resolve_variant("rbf"), x, torch.randn(4, 4, 3, 3), 1)
        assert not tap_products_fit(resolve_variant("cosine"), x, torch.randn(3, 4, 3, 3), 1)
        wide = torch.randn(1, 200, 5, 5)
        assert not tap_products_fit(resolve_variant("cosine"), wide, torch.randn(4, 200, 3, 3), 1)
    assert not tap_products_fit(
        resolve_variant("cosine"), torch.randn(1, 32, 5, 5), torch.randn(4, 16, 3, 3), 2
    )

    class MyCosine(type(resolve_variant("cosine"))):
        eps = 1.0

    assert not tap_products_fit(MyCosine(), x, torch.randn(4, 1, 3, 3), 4)


@pytest.mark.parametrize("name", ["cosine", "sharpened_cosine", "rbf", "polynomial"])
def test_compiled_fullgraph_equals_eager(name):
    # the tap loops are custom operators, so torch.compile traces this path's composition of them
    x = torch.randn(2, 8, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, dtype=torch.float64, requires_grad=True)

    def layer(x, w):
        return anyconv.generalized_conv(x, w, name, padding=1, groups=8)

    eager = layer(x, w)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")(x, w)
    torch.testing.assert_close(compiled, eager)
    grad = torch.randn_like(eager)
    for compiled_grad, eager_grad in zip(
        torch.autograd.grad(compiled, (x, w), grad), torch.autograd.grad(eager, (x, w), grad)
    ):
        torch.testing.assert_close(compiled_grad, eager_grad)


def test_vmap_and_channels_last_equal_the_formula():
    x, w = torch.randn(3, 2, 6, 9, 8, dtype=torch.float64), torch.randn(6, 1, 3, 3, dtype=torch.float64)
    batched = torch.func.vmap(
        lambda sample: anyconv.generalized_conv(sample, w, "cosine", padding=1, groups=6)
    )(x)
    expected = torch.stack([naive_generalized_conv(s, w, "cosine", padding=1, groups=6) for s in x])
    torch.testing.assert_close(batched, expected)
    last = x[0].to(memory_format=torch.channels_last)
    output = anyconv.generalized_conv(last, w, "cosine", padding=1, groups=6)
    assert output.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(output, expected[0])
