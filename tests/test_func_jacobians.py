"""torch.func's Jacobians and Hessians over anyconv (``jacrev``, ``jacfwd``, nested, ``hessian``)
and eager forward mode (``torch.autograd.forward_ad``).

Each against the variant's naive formula (``variant_reference``) differentiated by plain autograd,
and the standard convolutions against torch's own, in float64. A variant whose backward is its own
code (``l1``, ``max_plus``, ...) has reverse-mode first derivatives and refuses a second
derivative and forward mode by name.
"""

import random

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from reference import random_geometry
from torch.func import grad, hessian, jacfwd, jacrev
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


@pytest.mark.parametrize("which", [0, 1], ids=["input", "weight"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("variant", SMOOTH)
def test_forward_mode_matches_the_formulas_jacobian_and_hessian(variant, geometry, which):
    """``jacfwd`` and ``torch.func.hessian`` (forward over reverse) run the op's ``jvp`` rule."""
    input, weight, arguments = _tensors(geometry)
    point = (input, weight)[which]
    ours = _function_of(which, input, weight, anyconv.generalized_conv, variant, arguments)
    formula = _function_of(which, input, weight, naive_generalized_conv, variant, arguments)
    torch.testing.assert_close(jacfwd(ours)(point), torch.autograd.functional.jacobian(formula, point))
    ours = _function_of(which, input, weight, anyconv.generalized_conv, variant, arguments, squared=True)
    formula = _function_of(which, input, weight, naive_generalized_conv, variant, arguments, squared=True)
    torch.testing.assert_close(hessian(ours)(point), torch.autograd.functional.hessian(formula, point))


#: eager forward mode: (name, anyconv's call, the reference) on (input, weight, bias) with tangents
DUAL_CASES = {
    "conv": (
        lambda x, w, b: anyconv.conv(x, w, b, padding=1, stride=2),
        lambda x, w, b: F.conv2d(x, w, b, padding=1, stride=2),
    ),
    "conv_transpose": (
        lambda x, w, b: anyconv.conv_transpose(x, w, b, stride=2, padding=1),
        lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1),
    ),
    "cosine": (
        lambda x, w, b: anyconv.generalized_conv(x, w, "cosine", b, padding=1),
        lambda x, w, b: naive_generalized_conv(x, w, "cosine", b, padding=1),
    ),
    "l2": (
        lambda x, w, b: anyconv.generalized_conv(x, w, "l2", b, padding=1),
        lambda x, w, b: naive_generalized_conv(x, w, "l2", b, padding=1),
    ),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", DUAL_CASES)
def test_eager_forward_mode_carries_every_tangent(case, dtype):
    """Dual tensors had run the eager paths, which dropped the tangent without a word."""
    generator = torch.Generator().manual_seed(2)
    shapes = ((2, 4, 7, 7), (4, 4, 3, 3), (4,))
    primals = [torch.randn(shape, dtype=dtype, generator=generator) for shape in shapes]
    tangents = [torch.randn(shape, dtype=dtype, generator=generator) for shape in shapes]
    ours, reference = DUAL_CASES[case]
    with forward_ad.dual_level():
        duals = [forward_ad.make_dual(primal, tangent) for primal, tangent in zip(primals, tangents)]
        got, expected = forward_ad.unpack_dual(ours(*duals)), forward_ad.unpack_dual(reference(*duals))
    assert got.tangent is not None
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    torch.testing.assert_close(got.primal, expected.primal, **tolerance)
    torch.testing.assert_close(got.tangent, expected.tangent, **tolerance)


@pytest.mark.parametrize("variant", OWN_BACKWARD)
def test_forward_mode_of_a_variant_with_its_own_backward_is_refused_by_name(variant):
    input, weight, arguments = _tensors("2d-groups")
    with pytest.raises(RuntimeError, match=f"no forward-mode derivative .* for variant '{variant}'"):
        jacfwd(lambda w: anyconv.generalized_conv(input, w, variant, **arguments))(weight)
    with forward_ad.dual_level(), pytest.raises(RuntimeError, match="no forward-mode derivative"):
        anyconv.generalized_conv(
            forward_ad.make_dual(input, torch.ones_like(input)), weight, variant, **arguments
        )


@pytest.mark.parametrize("transform", [jacrev, jacfwd], ids=["jacrev", "jacfwd"])
@pytest.mark.parametrize(
    ("variant", "option", "fixed"), [("rbf", "gamma", {}), ("polynomial", "c", {"degree": 2})]
)
def test_jacobians_with_respect_to_a_per_channel_option(variant, option, fixed, transform):
    input, weight, _ = _tensors("2d-groups")
    values = torch.rand(4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.1

    def ours(tensor):
        return anyconv.generalized_conv(input, weight, variant, groups=2, **fixed, **{option: tensor})

    def formula(tensor):
        return naive_generalized_conv(input, weight, variant, groups=2, **fixed, **{option: tensor})

    torch.testing.assert_close(transform(ours)(values), torch.autograd.functional.jacobian(formula, values))


def _random_cases(count):
    """Random geometries of 1 to 3 dimensions, with groups and per-side padding (seeded)."""
    rng = random.Random(7)
    cases = []
    for index in range(count):
        geometry = random_geometry(rng, 1 + index % 3, largest_size=5)
        groups = rng.choice([1, 2])
        channels, out_channels = 2 * groups, 2 * groups
        cases.append(
            (
                (2, channels, *geometry["input_size"]),
                (out_channels, channels // groups, *geometry["kernel_size"]),
                dict(
                    stride=geometry["stride"],
                    dilation=geometry["dilation"],
                    padding=list(geometry["padding"]),
                    groups=groups,
                ),
            )
        )
    return cases


@pytest.mark.parametrize("variant", ["dot", "cosine", "l2"])
@pytest.mark.parametrize(("input_shape", "weight_shape", "arguments"), _random_cases(9))
def test_both_modes_on_random_geometries(input_shape, weight_shape, arguments, variant):
    generator = torch.Generator().manual_seed(5)
    input = torch.randn(input_shape, dtype=torch.float64, generator=generator)
    weight = torch.randn(weight_shape, dtype=torch.float64, generator=generator)
    for which in (0, 1):
        point = (input, weight)[which]
        ours = _function_of(which, input, weight, anyconv.generalized_conv, variant, arguments)
        expected = torch.autograd.functional.jacobian(
            _function_of(which, input, weight, naive_generalized_conv, variant, arguments), point
        )
        torch.testing.assert_close(jacrev(ours)(point), expected)
        torch.testing.assert_close(jacfwd(ours)(point), expected)
