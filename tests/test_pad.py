"""pad: the four modes against F.pad for N = 1..3 and against a naive reference for N = 4."""

import random

import pytest
import torch
import torch.nn.functional as F
from reference import fits_mode, naive_pad, random_geometry, torch_pad

from anyconv.functional import pad
from anyconv.geometry import make_geometry

TORCH_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def mode_cases(ndim: int, count: int, seed: int, **limits) -> list:
    rng = random.Random(seed)
    cases = []
    for index in range(count):
        geometry = random_geometry(rng, ndim, **limits)
        geometry["kernel_size"], geometry["dilation"] = [1] * ndim, [1] * ndim
        for mode in TORCH_MODE:
            if fits_mode(geometry, mode):
                cases.append(pytest.param(mode, geometry, id=f"{mode}-{ndim}d-{index}"))
    return cases


CASES = mode_cases(1, 10, 1) + mode_cases(2, 10, 2) + mode_cases(3, 8, 3, largest_size=5)
NAIVE_CASES = mode_cases(4, 5, 4, largest_size=3) + mode_cases(5, 2, 5, largest_size=2)


def anyconv_pad(input: torch.Tensor, case: dict, mode: str) -> torch.Tensor:
    geometry = make_geometry(
        case["input_size"], case["kernel_size"], case["stride"], case["padding"], padding_mode=mode
    )
    return pad(input, geometry)


@pytest.mark.parametrize(("mode", "case"), CASES)
def test_pad_equals_torch_pad(mode, case):
    input = torch.randn(2, 3, *case["input_size"], dtype=torch.float64)
    expected = F.pad(input, torch_pad(case["padding"]), mode=TORCH_MODE[mode])
    assert torch.equal(anyconv_pad(input, case, mode), expected)


@pytest.mark.parametrize(("mode", "case"), NAIVE_CASES)
def test_pad_beyond_three_dimensions_equals_naive_reference(mode, case):
    input = torch.randn(1, 2, *case["input_size"], dtype=torch.float64)
    assert torch.equal(anyconv_pad(input, case, mode), naive_pad(input, case["padding"], mode))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_pad_gradient(mode):
    case = {
        "input_size": [3, 4, 2, 3],
        "kernel_size": [1] * 4,
        "stride": [1] * 4,
        "padding": [(1, 2), (0, 1), (1, 1), (2, 0)],
    }
    input = torch.randn(1, 1, *case["input_size"], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda tensor: anyconv_pad(tensor, case, mode), (input,))


def test_integer_input_pads_exactly():
    geometry = make_geometry((3,), 1, padding=((2, 2),), padding_mode="reflect")
    assert pad(torch.tensor([[[7, 8, 9]]], dtype=torch.int32), geometry).tolist() == [[[9, 8, 7, 8, 9, 8, 7]]]


def test_unpadded_geometry_returns_the_input_itself():
    input = torch.randn(1, 1, 4)
    assert pad(input, make_geometry((4,), 2, padding_mode="reflect")) is input
