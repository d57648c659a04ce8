"""Autocast: anyconv follows torch's policy for convolutions (they run in autocast's lower dtype)."""

import pytest
import torch

import anyconv
from anyconv.variants import BUILTIN_VARIANTS

#: (anyconv module, torch module) with the same arguments
PAIRS = {
    "conv2d": (lambda: anyconv.nn.Conv2d(3, 4, 3, padding=1), lambda: torch.nn.Conv2d(3, 4, 3, padding=1)),
    "conv1d-groups": (
        lambda: anyconv.nn.Conv1d(4, 6, 3, groups=2, stride=2),
        lambda: torch.nn.Conv1d(4, 6, 3, groups=2, stride=2),
    ),
    "conv_transpose2d": (
        lambda: anyconv.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1),
        lambda: torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1),
    ),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", PAIRS)
def test_modules_follow_torchs_autocast_policy(name, dtype):
    torch.manual_seed(0)
    mine, theirs = (make() for make in PAIRS[name])
    theirs.load_state_dict(mine.state_dict())
    input = torch.randn(2, *((3, 6, 5) if "2d" in name else (4, 9)))
    with torch.autocast("cpu", dtype=dtype):
        got, expected = mine(input), theirs(input)
    assert got.dtype == expected.dtype == dtype
    torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=3e-2)
    # the parameters stay float32, and so do their gradients
    got.float().square().sum().backward()
    assert mine.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("variant", sorted(BUILTIN_VARIANTS))
def test_every_variant_runs_in_bfloat16_under_autocast(variant):
    torch.manual_seed(0)
    module = anyconv.nn.GeneralizedConv2d(3, 4, 3, padding=1, variant=variant)
    input = torch.randn(2, 3, 6, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = module(input)
    assert output.dtype == torch.bfloat16
    reference = anyconv.generalized_conv(
        input.bfloat16(), module.weight.bfloat16(), variant, module.bias.bfloat16(), padding=1
    )
    torch.testing.assert_close(output, reference)
    output.float().sum().backward()
    assert module.weight.grad.dtype == torch.float32


def test_float64_is_left_alone():
    input, weight = torch.randn(1, 2, 5, 5, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert anyconv.conv(input, weight).dtype == torch.float64
