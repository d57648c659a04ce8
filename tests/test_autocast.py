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


#: (input dtype, weight dtype) as a network under autocast meets them: a layer after the first
#: receives the lower dtype's activations with its float32 parameters
MIXED = [(torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float32, torch.bfloat16)]


@pytest.mark.parametrize("dtypes", MIXED, ids=lambda pair: "-".join(str(d)[6:] for d in pair))
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_mixed_dtypes_are_cast_before_they_are_compared(transposed, dtypes):
    generator = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(shape, generator=generator) for shape in ((2, 4, 6, 5), (4, 4, 3, 3), (4,)))
    x, w = x.to(dtypes[0]), w.to(dtypes[1])
    ours, theirs = (
        (anyconv.conv_transpose, torch.nn.functional.conv_transpose2d)
        if transposed
        else (anyconv.conv, torch.nn.functional.conv2d)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = ours(x, w, b, stride=2, padding=1), theirs(x, w, b, stride=2, padding=1)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("variant", ["dot", "l1", "cosine"])
def test_a_converted_network_trains_under_autocast(variant):
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=2),
        torch.nn.ConvTranspose2d(8, 4, 2, stride=2),
    )
    converted = anyconv.convert(network, variant)
    input = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = converted(input)
    assert output.dtype == torch.bfloat16
    # the reference: each layer by hand in bfloat16, as autocast casts them
    expected = input.bfloat16()
    for layer in converted:
        if isinstance(layer, torch.nn.ReLU):
            expected = layer(expected)
            continue
        weight, bias = layer.weight.bfloat16(), layer.bias.bfloat16()
        if isinstance(layer, torch.nn.ConvTranspose2d):
            expected = anyconv.conv_transpose(expected, weight, bias, stride=2)
        else:
            groups = layer.groups
            expected = anyconv.generalized_conv(expected, weight, variant, bias, padding=1, groups=groups)
    # one rounding to bfloat16 apart at most: the two calls may sum the taps in different orders
    torch.testing.assert_close(output, expected, rtol=1.6e-2, atol=1e-2)
    output.float().sum().backward()
    assert all(parameter.grad.dtype == torch.float32 for parameter in converted.parameters())


def test_a_bad_argument_under_autocast_is_named():
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="weight"):
        anyconv.conv(torch.randn(1, 2, 5, 5), "not a tensor")
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="input"):
        anyconv.conv_transpose([1.0], torch.randn(2, 3, 3, 3))
