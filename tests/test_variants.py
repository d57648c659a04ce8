"""Every built-in variant against its formula, computed naively in float64 from the fields.

Forward values and gradients (input, weight, bias, learnable options) for N = 1, 2, 3 with
groups, stride, dilation and padding; gradcheck for the variants that are smooth.
"""

import pytest
import torch
from conftest import take_views_everywhere
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.variants import BUILTIN_VARIANTS, ProductVariant, resolve_variant

GEOMETRIES = [
    dict(
        id="1d-groups-stride", size=(11,), channels=4, outputs=6, kernel=(3,), groups=2, stride=2, padding=1
    ),
    dict(
        id="2d-dilation-asym",
        size=(7, 8),
        channels=3,
        outputs=5,
        kernel=(3, 2),
        stride=(1, 2),
        padding=(2, 0),
        dilation=(2, 1),
    ),
    dict(id="2d-same-groups", size=(6, 6), channels=4, outputs=4, kernel=3, groups=4, padding="same"),
    dict(id="2d-reflect", size=(5, 6), channels=2, outputs=3, kernel=3, padding=1, padding_mode="reflect"),
    dict(
        id="3d-groups-dilation",
        size=(5, 4, 5),
        channels=4,
        outputs=6,
        kernel=2,
        groups=2,
        padding=1,
        dilation=2,
    ),
]

#: variant -> options tried besides the defaults
OPTIONS = {
    "lp": [dict(p=3.0), dict(p=1.5)],
    "rbf": [dict(gamma=0.2)],
    "polynomial": [dict(degree=2, c=0.5)],
    "sharpened_cosine": [dict(exponent=1.5, q=0.1)],
    "l1": [dict(adder_grad=False)],
}
SMOOTH = ["dot", "l2", "lp", "rbf", "polynomial", "cosine", "sharpened_cosine"]


def _case(geometry, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    kernel = geometry["kernel"]
    kernel = kernel if isinstance(kernel, tuple) else (kernel,) * len(geometry["size"])
    groups = geometry.get("groups", 1)
    x = torch.randn(2, geometry["channels"], *geometry["size"], generator=generator, dtype=dtype)
    w_shape = (geometry["outputs"], geometry["channels"] // groups, *kernel)
    w = torch.randn(w_shape, generator=generator, dtype=dtype)
    b = torch.randn(geometry["outputs"], generator=generator, dtype=dtype)
    conv_args = {
        key: geometry[key]
        for key in ("stride", "padding", "dilation", "groups", "padding_mode")
        if key in geometry
    }
    return x, w, b, conv_args


def _variant_cases():
    for name in BUILTIN_VARIANTS:
        for options in [{}, *OPTIONS.get(name, [])]:
            label = name + "".join(f"-{key}={value}" for key, value in options.items())
            yield pytest.param(name, options, id=label)


def _scaled(name, x, w):
    """Inputs scaled so each formula stays in a well-conditioned range (polynomial grows fast)."""
    if name == "polynomial":
        return x * 0.3, w * 0.3
    return x, w


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g["id"] for g in GEOMETRIES])
@pytest.mark.parametrize("name, options", list(_variant_cases()))
def test_forward_and_gradients_equal_the_naive_formula(name, options, geometry):
    x, w, b, conv_args = _case(geometry)
    x, w = _scaled(name, x, w)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    expected = naive_generalized_conv(x, w, name, b, **conv_args, **options)
    actual = anyconv.generalized_conv(x, w, name, b, **conv_args, **options)
    torch.testing.assert_close(actual, expected)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (x, w, b), grad)
    actual_grads = torch.autograd.grad(actual, (x, w, b), grad)
    for which, got, want in zip(("input", "weight", "bias"), actual_grads, expected_grads):
        torch.testing.assert_close(got, want, msg=lambda message, which=which: f"{which}: {message}")


def _product_variant_cases():
    for case in _variant_cases():
        name, options = case.values
        if isinstance(resolve_variant(name, **options), ProductVariant):
            yield case


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g["id"] for g in GEOMETRIES])
@pytest.mark.parametrize("name, options", list(_product_variant_cases()))
def test_the_backward_on_shifted_views_equals_the_naive_formula(name, options, geometry, views_everywhere):
    test_forward_and_gradients_equal_the_naive_formula(name, options, geometry)


PER_CHANNEL = [
    pytest.param("rbf", {"gamma": (0.05, 0.3)}, id="rbf-gamma"),
    pytest.param("polynomial", {"c": (-0.5, 1.5)}, id="polynomial-c"),
    pytest.param("sharpened_cosine", {"exponent": (1.2, 3.0), "q": (0.01, 0.5)}, id="sharpened-exponent-q"),
]


@pytest.mark.parametrize("name, ranges", PER_CHANNEL)
@pytest.mark.parametrize("geometry", GEOMETRIES[:3], ids=[g["id"] for g in GEOMETRIES[:3]])
def test_learnable_per_channel_options_get_their_gradients(name, ranges, geometry):
    x, w, b, conv_args = _case(geometry)
    x, w = _scaled(name, x, w)
    generator = torch.Generator().manual_seed(1)
    options = {
        option: (
            low + (high - low) * torch.rand(geometry["outputs"], generator=generator, dtype=x.dtype)
        ).requires_grad_()
        for option, (low, high) in ranges.items()
    }
    x.requires_grad_(), w.requires_grad_()
    expected = naive_generalized_conv(x, w, name, b, **conv_args, **options)
    actual = anyconv.generalized_conv(x, w, name, b, **conv_args, **options)
    torch.testing.assert_close(actual, expected)
    leaves = (x, w, *options.values())
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, leaves, grad)
    for got, want in zip(torch.autograd.grad(actual, leaves, grad), expected_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("views", [False, True], ids=["fields", "views"])
@pytest.mark.parametrize("name, ranges", PER_CHANNEL)
def test_fixed_per_channel_options_take_the_variants_own_backward(name, ranges, views, monkeypatch):
    # tensors that want no gradient: the variant's own backward gets them as (G, 1, Og)
    if views:
        take_views_everywhere(monkeypatch)
    x, w, b, conv_args = _case(GEOMETRIES[0])
    x, w = _scaled(name, x, w)
    generator = torch.Generator().manual_seed(1)
    options = {
        option: low + (high - low) * torch.rand(GEOMETRIES[0]["outputs"], generator=generator, dtype=x.dtype)
        for option, (low, high) in ranges.items()
    }
    x.requires_grad_(), w.requires_grad_()
    expected = naive_generalized_conv(x, w, name, b, **conv_args, **options)
    actual = anyconv.generalized_conv(x, w, name, b, **conv_args, **options)
    torch.testing.assert_close(actual, expected)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (x, w), grad)
    for got, want in zip(torch.autograd.grad(actual, (x, w), grad), expected_grads):
        torch.testing.assert_close(got, want)


GRADCHECKED = [pytest.param(name, False, id=name) for name in SMOOTH + ["l1", "max_plus", "min_plus"]] + [
    pytest.param(name, True, id=f"{name}-views")
    for name in SMOOTH
    if isinstance(resolve_variant(name), ProductVariant)
]


@pytest.mark.parametrize("name, views", GRADCHECKED)
def test_gradcheck(name, views, monkeypatch):
    if views:
        take_views_everywhere(monkeypatch)
    # l1 and the tropical variants are piecewise smooth: random float64 values stay off the kinks
    x, w, b, conv_args = _case(
        dict(size=(5, 4), channels=2, outputs=4, kernel=(2, 3), groups=2, padding=1, stride=(2, 1))
    )
    x, w = _scaled(name, x, w)
    inputs = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda x, w, b: anyconv.generalized_conv(x, w, name, b, **conv_args), inputs
    )


def test_gradcheck_of_learnable_options():
    x, w, _, conv_args = _case(dict(size=(5,), channels=2, outputs=2, kernel=(3,), padding=1))
    exponent = torch.tensor([1.5, 2.5], dtype=x.dtype, requires_grad=True)
    q = torch.tensor([0.1, 0.3], dtype=x.dtype, requires_grad=True)
    gamma = torch.tensor([0.1, 0.4], dtype=x.dtype, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, exponent, q: anyconv.generalized_conv(
            x, w, "sharpened_cosine", exponent=exponent, q=q, **conv_args
        ),
        (x.requires_grad_(), w.requires_grad_(), exponent, q),
    )
    assert torch.autograd.gradcheck(
        lambda w, gamma: anyconv.generalized_conv(x.detach(), w, "rbf", gamma=gamma, **conv_args), (w, gamma)
    )


def test_adder_grad_is_addernets_rule():
    """Chen et al. (CVPR 2020): dY/dF = X - F, dY/dX = HardTanh(F - X), summed like the exact rule."""
    x, w, _, conv_args = _case(dict(size=(6, 6), channels=3, outputs=4, kernel=3, padding=1))
    x.requires_grad_(), w.requires_grad_()
    output = anyconv.generalized_conv(x, w, "l1", adder_grad=True, **conv_args)
    torch.testing.assert_close(output, anyconv.generalized_conv(x, w, "l1", **conv_args))
    grad = torch.randn_like(output)
    grad_x, grad_w = torch.autograd.grad(output, (x, w), grad)
    columns = anyconv.unfold(x.detach(), 3, padding=1)  # (B, K, L)
    filters = w.detach().reshape(4, -1)  # (O, K)
    g = grad.flatten(2)  # (B, O, L)
    differences = columns[:, None] - filters[None, :, :, None]  # (B, O, K, L)
    expected_w = (g[:, :, None] * differences).sum((0, 3)).reshape(w.shape)
    expected_columns = (g[:, :, None] * (-differences).clamp(-1, 1)).sum(1)
    expected_x = anyconv.fold(expected_columns, (6, 6), 3, padding=1)
    torch.testing.assert_close(grad_w, expected_w)
    torch.testing.assert_close(grad_x, expected_x)


def test_unbatched_input_and_float32():
    x, w, b, conv_args = _case(GEOMETRIES[1], dtype=torch.float32)
    for name in BUILTIN_VARIANTS:
        xs, ws = _scaled(name, x, w)
        expected = naive_generalized_conv(xs.double(), ws.double(), name, b.double(), **conv_args)
        actual = anyconv.generalized_conv(xs[0], ws, name, b, **conv_args)
        torch.testing.assert_close(actual, expected[0].float(), rtol=1e-4, atol=1e-4)
