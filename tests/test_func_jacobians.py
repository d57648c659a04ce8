"""torch.func's Jacobians and Hessians over anyconv: ``jacrev``, ``jacrev`` of ``jacrev`` or of ``grad``.

Each against the variant's naive formula (``variant_reference``) differentiated by plain autograd,
and the standard convolutions against torch's own, in float64. A variant whose backward is its own
code (``l1``, ``max_plus``, ...) has first derivatives here and refuses the second by name.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, jacrev
from variant_reference import naive_generalized_conv

import anyconv

#: variants with a second derivative (their gradients are recomputed from the formula)
SMOOTH = ["dot", "l2", "rbf", "polynomial", "cosine", "sharpened_cosine"]
#: variants whose backward is their own code
OWN_BACKWARD = ["l1", "lp", "max_plus", "min_plus"]
#: (input shape, weight shape, keyword arguments): a grouped 2-D layer and a strided 1-D one
GEOMETRIES = {
    "2d-groups": ((2, 4, 5, 5), (4, 2, 3, 3), dict(padding=1, groups=2)),
    "1d-stride": ((2, 3, 9), (2, 3, 3), dict(stride=2, dilation=2)),
}


def _tensors(geometry):
    generator = torch.Generator().manual_seed(0)
    input_shape, weight_shape, arguments = GEOMETRIES[geometry]
    input = torch.randn(input_shape, dtype=torch.float64, generator=generator)
    weight = torch.randn(weight_shape, dtype=torch.float64, generator=generator)
    return input, weight, arguments


def _function_of(which, input, weight, conv, variant, arguments, squared=False):
    """``conv(input, weight, variant)`` (summed squares if ``squared``) as a function of the input
    (``which`` 0) or of the weight (1) alone."""

    def call(x, w):
        output = conv(x, w, variant, **arguments)
        return output.square().sum() if squared else output

    return (lambda x: call(x, weight)) if which == 0 else (lambda w: call(input, w))


@pytest.mark.parametrize("which", [0, 1], ids=["input", "weight"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("variant", SMOOTH + OWN_BACKWARD)
def test_jacrev_matches_the_formulas_jacobian(variant, geometry, which):
    input, weight, arguments = _tensors(geometry)
    ours = _function_of(which, input, weight, anyconv.generalized_conv, variant, arguments)
    formula = _function_of(which, input, weight, naive_generalized_conv, variant, arguments)
    point = (input, weight)[which]
    expected = torch.autograd.functional.jacobian(formula, point)
    torch.testing.assert_close(jacrev(ours)(point), expected)


@pytest.mark.parametrize("which", [0, 1], ids=["input", "weight"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("variant", SMOOTH)
def test_second_derivatives_by_nested_transforms_match_the_formulas_hessian(variant, geometry, which):
    """A backward that recomputed its gradients by ``torch.autograd.grad`` gave ``jacrev`` of
    ``jacrev`` a Hessian of zeros: the recomputation was recorded at no level the outer transform
    sees. The gradients under torch.func are now the formula's ``torch.func.vjp``."""
    input, weight, arguments = _tensors(geometry)
    point = (input, weight)[which]
    formula = _function_of(which, input, weight, naive_generalized_conv, variant, arguments, squared=True)
    expected = torch.autograd.functional.hessian(formula, point)
    assert expected.abs().max() > 0
    ours = _function_of(which, input, weight, anyconv.generalized_conv, variant, arguments, squared=True)
    torch.testing.assert_close(jacrev(jacrev(ours))(point), expected)
    torch.testing.assert_close(jacrev(grad(ours))(point), expected)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_the_standard_convolutions_hessians_match_torchs(transposed):
    generator = torch.Generator().manual_seed(1)
    input = torch.randn(2, 4, 5, 5, dtype=torch.float64, generator=generator)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=generator)
    ours, theirs = (anyconv.conv_transpose, F.conv_transpose2d) if transposed else (anyconv.conv, F.conv2d)
    arguments = dict(stride=2, padding=1) if transposed else dict(padding=1)

    def loss_of(conv):
        # the weight's layout as each op reads it; a square so that the Hessian is not zero
        return lambda w: conv(input, w if transposed else w.transpose(0, 1), **arguments).square().sum()

    torch.testing.assert_close(jacrev(jacrev(loss_of(ours)))(weight), jacrev(jacrev(loss_of(theirs)))(weight))


@pytest.mark.parametrize("variant", OWN_BACKWARD)
def test_a_second_derivative_of_a_variant_with_its_own_backward_is_refused_by_name(variant):
    input, weight, arguments = _tensors("2d-groups")

    def loss(w):
        return anyconv.generalized_conv(input, w, variant, **arguments).square().sum()

    with pytest.raises(RuntimeError, match=f"no second derivative for variant '{variant}'"):
        jacrev(jacrev(loss))(weight)
