"""The engine's custom operators pass torch.library.opcheck: schema, fake, autograd and dispatch."""

import pytest
import torch

import anyconv
from anyconv.engine.ops import generalized_conv_backward_op, generalized_conv_op, keeps, variant_arguments
from anyconv.engine.tap_loops import tap_loops_backward_op, tap_loops_fit, tap_loops_op
from anyconv.variants import resolve_variant

#: id -> (variant, options, input shape, weight shape, stride, padding pairs flattened, dilation, groups)
CASES = {
    "dot-padded": ("dot", {}, (2, 4, 6, 5), (6, 4, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 1),
    "l2-stride-groups": ("l2", {}, (1, 4, 7, 6), (4, 2, 3, 2), [2, 1], [0, 0, 1, 0], [1, 1], 2),
    "rbf-tensor-gamma": (
        "rbf",
        {"gamma": torch.tensor([0.1, 0.2, 0.3])},
        (2, 2, 5),
        (3, 2, 3),
        [1],
        [1, 1],
        [2],
        1,
    ),
    "polynomial-even": (
        "polynomial",
        {"degree": 2},
        (1, 3, 5, 5),
        (2, 3, 3, 3),
        [1, 1],
        [1, 1, 1, 1],
        [1, 1],
        1,
    ),
    "cosine": ("cosine", {}, (2, 3, 5, 4), (4, 3, 2, 2), [1, 1], [0, 0, 0, 0], [1, 1], 1),
    "sharpened_cosine": (
        "sharpened_cosine",
        {"q": 0.1},
        (1, 2, 4, 4),
        (2, 2, 2, 2),
        [1, 1],
        [0, 0, 0, 0],
        [1, 1],
        1,
    ),
    "l1": ("l1", {}, (1, 2, 4, 4), (3, 2, 2, 2), [1, 1], [0, 1, 0, 1], [1, 1], 1),
    "lp": ("lp", {"p": 3.0}, (1, 2, 4, 4), (3, 2, 2, 2), [1, 1], [0, 0, 0, 0], [1, 1], 1),
    "max_plus": ("max_plus", {}, (1, 2, 3, 3, 3), (2, 2, 2, 2, 2), [1, 1, 1], [0] * 6, [1, 1, 1], 1),
    "min_plus": ("min_plus", {}, (2, 2, 6), (2, 1, 3), [1], [1, 1], [1], 2),
}


def _arguments(case, requires_grad=True):
    name, options, input_shape, weight_shape, stride, padding, dilation, groups = CASES[case]
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(input_shape, dtype=torch.float64, generator=generator, requires_grad=requires_grad)
    weight = torch.randn(weight_shape, dtype=torch.float64, generator=generator, requires_grad=requires_grad)
    bias = torch.randn(weight_shape[0], dtype=torch.float64, generator=generator, requires_grad=requires_grad)
    options = {
        key: value.double() if isinstance(value, torch.Tensor) else value for key, value in options.items()
    }
    variant = resolve_variant(name, **options)
    registered, encoded, tensors = variant_arguments(variant)
    keep_output, keep_kept = keeps(variant, tensors)
    arguments = (input, weight, None if keep_output else bias, list(tensors), registered, encoded)
    return (*arguments, stride, padding, dilation, groups, 2**12, keep_output, keep_kept)


@pytest.mark.parametrize("case", CASES)
def test_forward_op_passes_opcheck(case):
    torch.library.opcheck(generalized_conv_op, _arguments(case))


@pytest.mark.parametrize("case", CASES)
def test_backward_op_passes_opcheck(case):
    input, weight, _, tensors, *rest, keep_output, keep_kept = _arguments(case, requires_grad=False)
    output, kept = generalized_conv_op(input, weight, None, tensors, *rest, keep_output, keep_kept)
    grad_output = torch.randn_like(output)
    needs = [True, True]
    saved = (output if keep_output else None, kept if keep_kept else None)
    torch.library.opcheck(
        generalized_conv_backward_op, (grad_output, input, weight, tensors, *saved, *rest, needs)
    )


def test_learnable_options_get_their_gradients_outside_the_ops():
    # autograd, a chunk at a time, differentiates the formula for the option tensors
    input, weight, *_ = _arguments("rbf-tensor-gamma")
    gamma = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, g: anyconv.generalized_conv(x, w, "rbf", padding=1, dilation=2, gamma=g),
        (input, weight, gamma),
    )


#: id -> (variant, options, input shape, weight shape, stride, padding pairs flattened, dilation, groups)
TAP_LOOP_CASES = {
    "dot-depthwise": ("dot", {}, (2, 4, 6, 5), (4, 1, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 4),
    "l1-stride-asymmetric": ("l1", {}, (1, 4, 7, 6), (4, 2, 3, 2), [2, 1], [0, 0, 1, 0], [1, 1], 2),
    "l1-adder": ("l1", {"adder_grad": True}, (2, 3, 9), (6, 1, 3), [2], [1, 1], [2], 3),
    "l2-3d": ("l2", {}, (1, 2, 4, 5, 4), (2, 1, 2, 2, 2), [1, 1, 1], [1, 0] * 3, [1, 1, 1], 2),
    "max_plus": ("max_plus", {}, (2, 2, 5, 5), (4, 1, 2, 3), [1, 1], [0, 0, 1, 1], [2, 1], 2),
    "min_plus": ("min_plus", {}, (3, 2, 6), (2, 1, 3), [1], [1, 1], [1], 2),
}


def _tap_loop_arguments(case, requires_grad=True, budget=2**12):
    name, options, input_shape, weight_shape, stride, padding, dilation, groups = TAP_LOOP_CASES[case]
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(input_shape, dtype=torch.float64, generator=generator, requires_grad=requires_grad)
    weight = torch.randn(weight_shape, dtype=torch.float64, generator=generator, requires_grad=requires_grad)
    bias = torch.randn(weight_shape[0], dtype=torch.float64, generator=generator, requires_grad=requires_grad)
    registered, encoded, _ = variant_arguments(resolve_variant(name, **options))
    return input, weight, bias, registered, encoded, stride, padding, dilation, groups, budget


tap_loops = pytest.mark.skipif(
    not tap_loops_fit(resolve_variant("dot"), torch.ones(1, 2, 3), torch.ones(2, 1, 3), 2),
    reason="the tap loops are not compiled here (no C++ compiler, or ANYCONV_NATIVE=0)",
)


@tap_loops
@pytest.mark.parametrize("budget", [1, 2**20], ids=["a-sample-per-chunk", "one-chunk"])
@pytest.mark.parametrize("case", TAP_LOOP_CASES)
def test_tap_loops_op_passes_opcheck(case, budget):
    arguments = _tap_loop_arguments(case, budget=budget)
    if case == "l1-adder":
        # AdderNet's rule is not the output's derivative, which opcheck compares it with
        arguments = tuple(value.detach() if isinstance(value, torch.Tensor) else value for value in arguments)
    torch.library.opcheck(tap_loops_op, arguments)


@tap_loops
@pytest.mark.parametrize(
    "needs", [[True, True], [True, False], [False, True]], ids=["both", "input", "weight"]
)
@pytest.mark.parametrize("case", TAP_LOOP_CASES)
def test_tap_loops_backward_op_passes_opcheck(case, needs):
    input, weight, bias, *rest = _tap_loop_arguments(case, requires_grad=False)
    grad_output = torch.randn_like(tap_loops_op(input, weight, bias, *rest))
    torch.library.opcheck(tap_loops_backward_op, (grad_output, input, weight, *rest, needs))


@tap_loops
def test_tap_loops_op_takes_a_channels_last_input():
    input, weight, bias, *rest = _tap_loop_arguments("dot-depthwise", requires_grad=False)
    expected = tap_loops_op(input, weight, bias, *rest)
    last = input.to(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(tap_loops_op, (last, weight, bias, *rest))
    torch.testing.assert_close(tap_loops_op(last, weight, bias, *rest), expected)
