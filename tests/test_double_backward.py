"""Second derivatives: gradgradcheck in float64 and a gradient penalty against torch's convolution.

The smooth variants and the standard convolution differentiate twice; the non-smooth ones
(l1, lp, max_plus, min_plus) raise a clear error at the second backward, never a wrong number.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import anyconv


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
    assert gradgradcheck(function, tensors)


def test_conv_on_shifted_views_gradgradcheck(views_everywhere):
    tensors = _tensors((1, 4, 5, 5), (3, 4, 3, 3), bias=False)
    assert gradgradcheck(lambda input, weight: anyconv.conv(input, weight, padding=1), tensors)


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

    assert gradgradcheck(function, tensors)


def test_learnable_option_gradgradcheck():
    input, weight = _tensors((1, 2, 4, 4), (3, 2, 2, 2), bias=False, scale=0.5)
    gamma = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, requires_grad=True)

    def function(input, weight, gamma):
        return anyconv.generalized_conv(input, weight, "rbf", gamma=gamma)

    assert gradgradcheck(function, (input, weight, gamma))


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

    assert gradgradcheck(function, tensors)


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


@pytest.mark.parametrize("variant", ["l1", "lp", "max_plus", "min_plus"])
def test_non_smooth_variants_refuse_the_second_backward(variant):
    input, weight = _tensors((1, 2, 4, 4), (3, 2, 2, 2), bias=False)
    output = anyconv.generalized_conv(input, weight, variant)
    # the first derivative with a graph is fine; differentiating it again is refused
    (gradient,) = torch.autograd.grad(output.sum(), weight, create_graph=True)
    with pytest.raises(RuntimeError, match=f"second derivative.*{variant}"):
        gradient.square().sum().backward()
