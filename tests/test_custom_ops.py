"""The engine's custom operators pass torch.library.opcheck: schema, fake, autograd and dispatch."""

import pytest
import torch

import anyconv
from anyconv.engine.ops import generalized_conv_backward_op, generalized_conv_op, keeps, variant_arguments
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
