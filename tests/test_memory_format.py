"""Memory format: channels-last input gives channels-last output and gradients, as torch's modules."""

import pytest
import torch

import anyconv

#: id -> (anyconv module, torch module, input shape, memory format)
CASES = {
    "conv2d": (
        lambda: anyconv.nn.Conv2d(4, 6, 3, padding=1),
        lambda: torch.nn.Conv2d(4, 6, 3, padding=1),
        (2, 4, 7, 6),
        torch.channels_last,
    ),
    "conv2d-views": (
        lambda: anyconv.nn.Conv2d(8, 6, 3, padding=1, bias=False),
        lambda: torch.nn.Conv2d(8, 6, 3, padding=1, bias=False),
        (2, 8, 32, 32),
        torch.channels_last,
    ),
    "conv2d-stride-groups": (
        lambda: anyconv.nn.Conv2d(4, 6, 3, stride=2, groups=2),
        lambda: torch.nn.Conv2d(4, 6, 3, stride=2, groups=2),
        (2, 4, 9, 8),
        torch.channels_last,
    ),
    "conv3d": (
        lambda: anyconv.nn.Conv3d(2, 3, 2, padding=1),
        lambda: torch.nn.Conv3d(2, 3, 2, padding=1),
        (1, 2, 4, 5, 3),
        torch.channels_last_3d,
    ),
    "conv_transpose2d": (
        lambda: anyconv.nn.ConvTranspose2d(4, 3, 3, stride=2),
        lambda: torch.nn.ConvTranspose2d(4, 3, 3, stride=2),
        (2, 4, 5, 6),
        torch.channels_last,
    ),
}


def _run(module, input):
    input = input.detach().requires_grad_()
    output = module(input)
    output.square().sum().backward()
    return output, input.grad, module.weight.grad


@pytest.mark.parametrize("case", CASES)
def test_channels_last_stays_channels_last(case):
    make_mine, make_theirs, shape, layout = CASES[case]
    torch.manual_seed(0)
    mine, theirs = make_mine().double(), make_theirs().double()
    theirs.load_state_dict(mine.state_dict())
    input = torch.randn(shape, dtype=torch.float64).to(memory_format=layout)
    got, expected = _run(mine, input), _run(theirs, input)
    # torch keeps the layout on its fast paths (not its float64 3-d one); anyconv always does
    assert got[0].is_contiguous(memory_format=layout)
    for value, reference in zip(got, expected):
        torch.testing.assert_close(value, reference)


@pytest.mark.parametrize("variant", ["l2", "cosine", "l1", "max_plus"])
def test_variants_keep_channels_last(variant):
    input = torch.randn(2, 3, 6, 5).to(memory_format=torch.channels_last)
    weight = torch.randn(4, 3, 3, 3)
    output = anyconv.generalized_conv(input, weight, variant, padding=1)
    assert output.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        output, anyconv.generalized_conv(input.contiguous(), weight, variant, padding=1)
    )
