"""Second derivatives: gradgradcheck in float64 and a gradient penalty against torch's convolution.

The smooth variants and the standard convolution differentiate twice; the non-smooth ones
(l1, lp, max_plus, min_plus) raise a clear error at the second backward, never a wrong number.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F
from conftest import take_views_everywhere
from torch.autograd import gradcheck, gradgradcheck
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine.fields_plan import fields_plan
from anyconv.engine.plan import plan_conv
from anyconv.variants import resolve_variant

PATHS = importlib.import_module("anyconv.engine.paths")


def _tensors(input_shape, weight_shape, seed=0, bias=True, scale=1.0, out_channels=None):
    generator = torch.Generator().manual_seed(seed)
    input = torch.randn(input_shape, dtype=torch.float64, generator=generator).requires_grad_()
    weight = (scale * torch.randn(weight_shape, dtype=torch.float64, generator=generator)).requires_grad_()
    tensors = [input, weight]
    if bias:
        size = weight_shape[0] if out_channels is None else out_channels
        tensors.append(torch.randn(size, dtype=torch.float64, generator=generator).requires_grad_())
    return tensors


#: id -> (input shape, weight shape, keyword arguments of anyconv.conv)
CONV_CASES = {
    "2d-padded-bias": ((2, 3, 5, 4), (4, 3, 3, 3), {"padding": 1}),
    "2d-stride-groups": ((1, 4, 6, 5), (4, 2, 3, 2), {"stride": 2, "groups": 2}),
    "1d-dilation-reflect": ((2, 2, 7), (3, 2, 3), {"dilation": 2, "padding": 2, "padding_mode": "reflect"}),
    "3d": ((1, 2, 3, 4, 3), (2, 2, 2, 2, 2), {"padding": 1}),
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_gradgradcheck(case):
    input_shape, weight_shape, kwargs = CONV_CASES[case]
    tensors = _tensors(input_shape, weight_shape)

    def function(input, weight, bias):
        return anyconv.conv(input, weight, bias, **kwargs)

    assert gradcheck(function, tensors)
    assert gradgradcheck(function, tensors, fast_mode=True)


def test_conv_on_shifted_views_gradgradcheck(views_everywhere):
    tensors = _tensors((1, 4, 5, 5), (3, 4, 3, 3), bias=False)
    assert gradgradcheck(
        lambda input, weight: anyconv.conv(input, weight, padding=1), tensors, fast_mode=True
    )


#: id -> (variant, options, keyword arguments); no zero padding for the cosines, whose norm has
#: no second derivative at a zero field
VARIANT_CASES = {
    "dot": ("dot", {}, {"padding": 1}),
    "l2": ("l2", {}, {"padding": 1, "stride": 2}),
    "rbf": ("rbf", {"gamma": 0.05}, {"padding": 1}),
    "polynomial-odd": ("polynomial", {"degree": 3, "c": 0.5}, {"groups": 2}),
    "polynomial-even": ("polynomial", {"degree": 2}, {"padding": 1}),
    "cosine": ("cosine", {}, {}),
    "sharpened_cosine": ("sharpened_cosine", {"exponent": 2.0, "q": 0.1}, {"groups": 2}),
}


@pytest.mark.parametrize("case", VARIANT_CASES)
def test_variant_gradgradcheck(case):
    variant, options, kwargs = VARIANT_CASES[case]
    tensors = _tensors((2, 4, 5, 4), (4, 4 // kwargs.get("groups", 1), 3, 2), scale=0.5)

    def function(input, weight, bias):
        return anyconv.generalized_conv(input, weight, variant, bias, **kwargs, **options)

    assert gradgradcheck(function, tensors, fast_mode=True)


#: variant -> its learnable options, one value per output channel of 4
LEARNABLE = {
    "rbf": {"gamma": [0.1, 0.2, 0.3, 0.4]},
    "polynomial": {"c": [0.5, -0.2, 0.3, 1.0]},
    "sharpened_cosine": {"exponent": [2.0, 2.5, 3.0, 1.5], "q": [0.1, 0.2, 0.1, 0.3]},
}


@pytest.mark.parametrize(
    ("path", "groups"),
    [("tap products", 4), ("fields", 4), ("fields", 1)],
    ids=["tap-products-depthwise", "fields-depthwise", "fields-groups1"],
)
@pytest.mark.parametrize("variant", LEARNABLE)
def test_learnable_options_gradgradcheck(variant, path, groups, monkeypatch):
    _force(path, monkeypatch)
    input, weight = _tensors((1, 4, 4, 4), (4, 4 // groups, 3, 3), bias=False, scale=0.5)
    names = list(LEARNABLE[variant])
    options = [
        torch.tensor(LEARNABLE[variant][name], dtype=torch.float64, requires_grad=True) for name in names
    ]
    instance = resolve_variant(variant, **dict(zip(names, options)))
    assert plan_conv(input, weight, instance, 1, 1, 1, groups, "zeros", None).path == path

    def function(input, weight, *options):
        return anyconv.generalized_conv(
            input, weight, variant, padding=1, groups=groups, **dict(zip(names, options))
        )

    assert gradgradcheck(function, (input, weight, *options), fast_mode=True)


@pytest.mark.parametrize("case", ["2d-stride", "1d-groups-dilation"])
def test_conv_transpose_gradgradcheck(case):
    if case == "2d-stride":
        tensors = _tensors((1, 3, 3, 4), (3, 2, 3, 3), out_channels=2)
        kwargs = {"stride": 2, "padding": 1, "output_padding": 1}
    else:
        tensors = _tensors((2, 4, 5), (4, 1, 3), out_channels=2)
        kwargs = {"groups": 2, "dilation": 2}

    def function(input, weight, bias):
        return anyconv.conv_transpose(input, weight, bias, **kwargs)

    assert gradgradcheck(function, tensors, fast_mode=True)


def _gradient_penalty(convolution, input, weight, bias):
    """A WGAN-GP style penalty: the norm of d loss / d input, differentiated again."""
    input = input.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    bias = bias.detach().requires_grad_()
    loss = convolution(input, weight, bias).square().sum()
    (gradient,) = torch.autograd.grad(loss, input, create_graph=True)
    gradient.norm().backward()
    return input.grad, weight.grad, bias.grad


@pytest.mark.parametrize("case", ["2d-padded-bias", "2d-stride-groups"])
def test_gradient_penalty_gives_torchs_numbers(case):
    input_shape, weight_shape, kwargs = CONV_CASES[case]
    tensors = _tensors(input_shape, weight_shape)
    got = _gradient_penalty(lambda x, w, b: anyconv.conv(x, w, b, **kwargs), *tensors)
    expected = _gradient_penalty(lambda x, w, b: F.conv2d(x, w, b, **kwargs), *tensors)
    for mine, theirs in zip(got, expected):
        if theirs is None:
            assert mine is None or not mine.abs().max() > 0
        else:
            torch.testing.assert_close(mine, theirs)


# The table: every smooth variant on every CPU path the plan can choose for it, at every kind of
# grouping and N = 1, 2, 3; each case's second derivatives compared with autograd through the
# naive formula, and the 2-d cases gradgradcheck'ed as well.

#: variant -> its options in the table (a non-integer power, a shift, a gamma off its default)
SMOOTH = {
    "dot": {},
    "l2": {},
    "rbf": {"gamma": 0.3},
    "polynomial": {"degree": 3, "c": 0.5},
    "cosine": {},
    "sharpened_cosine": {"exponent": 2.5, "q": 0.1},
}
#: variant -> the CPU paths the plan can choose for it; "shifted views" is the fields path with
#: its first backward on shifted views (a second one always recomputes the formula)
PATHS_OF = {
    "dot": ("pointwise", "tap loops", "fields", "shifted views"),
    "l2": ("tap loops", "fields", "shifted views"),
    "rbf": ("tap products", "tap forward", "fields", "shifted views"),
    "polynomial": ("tap products", "tap forward", "fields", "shifted views"),
    "cosine": ("pointwise", "tap products", "fields", "shifted views"),
    "sharpened_cosine": ("tap products", "tap forward", "fields", "shifted views"),
}
#: grouping -> groups, for 4 input and 4 output channels
GROUPINGS = {"groups1": 1, "2-per-group": 2, "depthwise": 4}
#: N -> (input shape, kernel, keyword arguments); no field wholly in the padding, where a
#: cosine has no second derivative
GEOMETRIES = {
    1: ((2, 4, 7), (3,), {"padding": 1, "dilation": 2}),
    2: ((1, 4, 5, 4), (3, 2), {"padding": (1, 0), "stride": (2, 1)}),
    3: ((1, 4, 3, 4, 3), (2, 2, 2), {"padding": (0, 1, 0)}),
}
#: the geometry's keyword arguments as plan_conv takes them, with their defaults
ARGUMENTS = (("stride", 1), ("padding", 0), ("dilation", 1))
#: the pointwise path's geometry: one tap, no padding
POINTWISE = {1: {"stride": 2}, 2: {"stride": (1, 2)}, 3: {}}


def _table():
    cases = []
    for variant, paths in PATHS_OF.items():
        for path in paths:
            for grouping, groups in GROUPINGS.items():
                # the tap loops and products take grouped convolutions only, the tap forward
                # dense ones only
                if path.startswith("tap") and (groups == 1) != (path == "tap forward"):
                    continue
                for ndim in GEOMETRIES:
                    cases.append(
                        pytest.param(variant, path, groups, ndim, id=f"{variant}-{path}-{grouping}-{ndim}d")
                    )
    return cases


def _geometry(path, ndim):
    input_shape, kernel, kwargs = GEOMETRIES[ndim]
    if path == "pointwise":
        return input_shape, (1,) * ndim, POINTWISE[ndim]
    return input_shape, kernel, kwargs


def _force(path, monkeypatch):
    """Make the plan choose ``path`` where it would choose another that fits before it."""
    if path in ("fields", "shifted views"):
        monkeypatch.setattr(PATHS, "tap_loops_fit", lambda *arguments: False)
        monkeypatch.setattr(PATHS, "tap_products_fit", lambda *arguments: False)
        monkeypatch.setattr(PATHS, "tap_forward_fits", lambda *arguments: False)
    if path == "shifted views":
        take_views_everywhere(monkeypatch)


def _second_derivatives(function, tensors, grad_output, directions):
    """The first derivatives (a vector-Jacobian product with ``grad_output``) and their derivatives
    along ``directions``: every second derivative, mixed ones included, projected."""
    tensors = [tensor.detach().requires_grad_() for tensor in tensors]
    output = function(*tensors)
    firsts = torch.autograd.grad(output, tensors, grad_output, create_graph=True, materialize_grads=True)
    projected = sum((first * direction).sum() for first, direction in zip(firsts, directions))
    seconds = torch.autograd.grad(projected, tensors, allow_unused=True, materialize_grads=True)
    return [*firsts, *seconds]


@pytest.mark.parametrize(("variant", "path", "groups", "ndim"), _table())
def test_second_derivatives_on_every_path(variant, path, groups, ndim, monkeypatch):
    input_shape, kernel, kwargs = _geometry(path, ndim)
    _force(path, monkeypatch)
    options = SMOOTH[variant]
    input, weight = _tensors(input_shape, (4, 4 // groups, *kernel), seed=ndim, bias=False, scale=0.5)
    instance = resolve_variant(variant, **options)
    stride, padding, dilation = (kwargs.get(name, default) for name, default in ARGUMENTS)
    plan = plan_conv(input, weight, instance, stride, padding, dilation, groups, "zeros", None)
    assert plan.path == path.replace("shifted views", "fields")
    if path == "shifted views":
        assert fields_plan(input, weight, instance, plan.geometry, groups, plan.budget).tap_chunks is not None

    def function(input, weight):
        return anyconv.generalized_conv(input, weight, variant, None, groups=groups, **kwargs, **options)

    def reference(input, weight):
        return naive_generalized_conv(input, weight, variant, None, groups=groups, **kwargs, **options)

    if ndim == 2:
        # numerical second derivatives cost the most here: once per path and grouping is enough
        # beside the exact comparison with the formula's below, made for every case
        assert gradgradcheck(function, (input, weight), fast_mode=True)
    generator = torch.Generator().manual_seed(1)
    output_shape = reference(input, weight).shape
    grad_output = torch.randn(output_shape, dtype=torch.float64, generator=generator)
    directions = [
        torch.randn(tensor.shape, dtype=torch.float64, generator=generator) for tensor in (input, weight)
    ]
    got = _second_derivatives(function, (input, weight), grad_output, directions)
    expected = _second_derivatives(reference, (input, weight), grad_output, directions)
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-11)


#: non-smooth variant -> the CPU paths the plan can choose for it (lp has the fields only; the
#: views serve product variants only)
NON_SMOOTH = {
    "l1": ("tap loops", "fields"),
    "lp": ("fields",),
    "max_plus": ("tap loops", "fields"),
    "min_plus": ("tap loops", "fields"),
}


def _non_smooth_table():
    return [
        pytest.param(variant, path, groups, ndim, id=f"{variant}-{path}-{grouping}-{ndim}d")
        for variant, paths in NON_SMOOTH.items()
        for path in paths
        for grouping, groups in GROUPINGS.items()
        if not (path == "tap loops" and groups == 1)
        for ndim in GEOMETRIES
    ]


@pytest.mark.parametrize(("variant", "path", "groups", "ndim"), _non_smooth_table())
def test_non_smooth_variants_refuse_the_second_backward(variant, path, groups, ndim, monkeypatch):
    input_shape, kernel, kwargs = _geometry(path, ndim)
    _force(path, monkeypatch)
    input, weight = _tensors(input_shape, (4, 4 // groups, *kernel), seed=ndim, bias=False)
    stride, padding, dilation = (kwargs.get(name, default) for name, default in ARGUMENTS)
    plan = plan_conv(
        input, weight, resolve_variant(variant), stride, padding, dilation, groups, "zeros", None
    )
    assert plan.path == path
    output = anyconv.generalized_conv(input, weight, variant, groups=groups, **kwargs)
    # the first derivative with a graph is fine and right; differentiating it again is refused
    gradients = torch.autograd.grad(output.sum(), (input, weight), create_graph=True)
    reference = naive_generalized_conv(input, weight, variant, groups=groups, **kwargs)
    expected = torch.autograd.grad(reference.sum(), (input, weight))
    for gradient, right in zip(gradients, expected):
        torch.testing.assert_close(gradient, right)
    for gradient in gradients:
        with pytest.raises(RuntimeError, match=f"second derivative.*{variant}"):
            torch.autograd.grad(gradient.square().sum(), (input, weight))
