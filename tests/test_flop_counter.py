"""torch.utils.flop_counter.FlopCounterMode counts anyconv's convolutions as torch counts its own.

Each custom operator of the engine has a FLOP formula (``engine/ops_flops.py``): two per output
element and tap of its field, once more per gradient in a backward. Before, the operators counted
nothing, so a converted model's count fell to its other layers' without a word.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import anyconv

#: (input shape, weight shape, keyword arguments, torch's function)
LAYERS = {
    "dense-3x3": ((2, 16, 8, 8), (16, 16, 3, 3), dict(padding=1), F.conv2d),
    "wide-dense": ((1, 64, 12, 12), (64, 64, 3, 3), dict(padding=1), F.conv2d),
    "depthwise-stride-2": ((2, 16, 9, 9), (16, 1, 3, 3), dict(groups=16, stride=2), F.conv2d),
    "grouped-dilated": ((2, 8, 9, 9), (8, 2, 3, 3), dict(groups=4, dilation=2), F.conv2d),
    "pointwise": ((2, 16, 8, 8), (8, 16, 1, 1), {}, F.conv2d),
    "1-D": ((2, 8, 32), (8, 8, 5), dict(padding=2), F.conv1d),
    "3-D": ((1, 4, 5, 6, 6), (4, 4, 3, 3, 3), dict(padding=1), F.conv3d),
}


def _count(function, *arguments, backward=False, **options):
    with FlopCounterMode(display=False) as counter:
        output = function(*arguments, **options)
        if backward:
            output.sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("variant", ["dot", "l1", "max_plus", "cosine", "l2", "lp"])
@pytest.mark.parametrize("layer", LAYERS)
def test_the_forward_counts_what_torch_counts_for_its_convolution(layer, variant):
    input_shape, weight_shape, options, reference = LAYERS[layer]
    input, weight = torch.randn(input_shape), torch.randn(weight_shape)
    expected = _count(reference, input, weight, **options)
    assert _count(anyconv.generalized_conv, input, weight, variant, **options) == expected > 0


@pytest.mark.parametrize("variant", ["dot", "l1", "cosine"])
@pytest.mark.parametrize("layer", LAYERS)
def test_the_backward_counts_the_forward_once_more_per_gradient(layer, variant):
    """Counted by hand: torch's own formula counts a grouped convolution's backward larger."""
    input_shape, weight_shape, options, reference = LAYERS[layer]
    input = torch.randn(input_shape, requires_grad=True)
    weight = torch.randn(weight_shape, requires_grad=True)
    output_shape = reference(input, weight, **options).shape
    forward = 2 * math.prod(output_shape) * math.prod(weight_shape[1:])
    counted = _count(anyconv.generalized_conv, input, weight, variant, backward=True, **options)
    # the forward, the input's gradient and the weight's; a cosine's backward may recompute more
    assert counted >= 3 * forward if variant == "cosine" else counted == 3 * forward


def test_a_converted_model_counts_what_the_original_counts():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
        torch.nn.Conv2d(32, 32, 1),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 8 * 8, 10),
    )
    input = torch.randn(2, 3, 16, 16)
    expected = _count(model, input)
    assert _count(anyconv.convert(model, "dot"), input) == expected


@pytest.mark.parametrize(
    ("input_shape", "weight_shape", "options"),
    [
        ((2, 16, 8, 8), (16, 8, 4, 4), dict(stride=2, padding=1)),
        ((2, 16, 8, 8), (16, 8, 2, 2), dict(stride=2)),
        ((2, 16, 8, 8), (16, 4, 3, 3), dict(stride=2, padding=1, output_padding=1, groups=2)),
    ],
    ids=["4x4-stride-2", "2x2-stride-2", "grouped-output-padding"],
)
def test_conv_transpose_counts_what_torch_counts(input_shape, weight_shape, options):
    input, weight = torch.randn(input_shape), torch.randn(weight_shape)
    expected = _count(F.conv_transpose2d, input, weight, **options)
    assert _count(anyconv.conv_transpose, input, weight, **options) == expected > 0
