"""Geometry: every form of the arguments, output sizes against torch's convolutions, the errors."""

import dataclasses
import random

import pytest
import torch
import torch.nn.functional as F
from reference import random_geometry, torch_pad

from anyconv import ArgumentError, ArgumentTypeError, Geometry, make_geometry
from anyconv.geometry import same_padding, transposed_output_size

NORMALISATION_CASES = [
    pytest.param(
        {"input_size": (9, 8), "kernel_size": 3},
        {"kernel_size": (3, 3), "padding": ((0, 0), (0, 0))},
        id="int-kernel",
    ),
    pytest.param(
        {"input_size": (9,), "kernel_size": (4,), "stride": 2, "dilation": (2,)},
        {"kernel_size": (4,), "stride": (2,), "dilation": (2,)},
        id="1d-tuples",
    ),
    pytest.param(
        {"input_size": (9, 8, 7), "kernel_size": (1,), "stride": [2]},
        {"kernel_size": (1, 1, 1), "stride": (2, 2, 2)},
        id="one-tuple-broadcasts",
    ),
    pytest.param(
        {"input_size": (9, 8), "kernel_size": 3, "padding": 2},
        {"padding": ((2, 2), (2, 2))},
        id="int-padding",
    ),
    pytest.param(
        {"input_size": (9, 8), "kernel_size": 3, "padding": (1, 0)},
        {"padding": ((1, 1), (0, 0))},
        id="tuple-padding",
    ),
    pytest.param(
        {"input_size": (9, 8), "kernel_size": 3, "padding": ((0, 2), (1, 0))},
        {"padding": ((0, 2), (1, 0)), "output_size": (9, 7)},
        id="per-side-pairs",
    ),
    pytest.param(
        {"input_size": (9, 8), "kernel_size": 3, "padding": ((0, 2), 1)},
        {"padding": ((0, 2), (1, 1))},
        id="pairs-and-ints-mixed",
    ),
    pytest.param(
        {"input_size": (9, 8), "kernel_size": 3, "padding": "valid"},
        {"padding": ((0, 0), (0, 0)), "output_size": (7, 6)},
        id="valid",
    ),
    pytest.param(
        {"input_size": (9, 8), "kernel_size": (3, 4), "padding": "same"},
        {"padding": ((1, 1), (1, 2)), "output_size": (9, 8)},
        id="same-odd-even",
    ),
    pytest.param(
        {"input_size": (9, 8), "kernel_size": (3, 4), "padding": "same", "dilation": (2, 3)},
        {"padding": ((2, 2), (4, 5)), "output_size": (9, 8)},
        id="same-dilated",
    ),
    pytest.param(
        {"input_size": (32, 32), "kernel_size": 3, "padding": 1, "stride": 2},
        {"output_size": (16, 16), "kernel_volume": 9, "num_positions": 256, "padded_size": (34, 34)},
        id="strided",
    ),
    pytest.param(
        {"input_size": (5, 6), "kernel_size": 3, "dilation": 2},
        {"field_span": (5, 5), "output_size": (1, 2)},
        id="dilated-span",
    ),
    pytest.param(
        {"input_size": (4, 5), "kernel_size": 1, "padding": ((1, 2), (3, 4))},
        {"torch_pad": (3, 4, 1, 2), "is_padded": True},
        id="torch-pad-order",
    ),
    pytest.param(
        {"input_size": torch.Size([4, 5]), "kernel_size": torch.Size([2, 2])},
        {"input_size": (4, 5), "kernel_size": (2, 2)},
        id="torch-size",
    ),
    pytest.param(
        {"input_size": (4,), "kernel_size": 3, "padding": 1, "padding_mode": "circular"},
        {"padding_mode": "circular", "output_size": (4,)},
        id="mode",
    ),
]


@pytest.mark.parametrize(("arguments", "expected"), NORMALISATION_CASES)
def test_arguments_normalise(arguments, expected):
    geometry = make_geometry(**arguments)
    for name, value in expected.items():
        assert getattr(geometry, name) == value, name


CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
SIZE_CASES = [
    pytest.param(
        random_geometry(random.Random(seed), ndim, largest_size=9, largest_kernel=4), id=f"{ndim}d-{seed}"
    )
    for ndim in (1, 2, 3)
    for seed in range(25)
]


@pytest.mark.parametrize("case", SIZE_CASES)
def test_output_size_equals_torch_convolution(case):
    ndim = len(case["kernel_size"])
    input = torch.zeros(1, 1, *case["input_size"])
    weight = torch.zeros(1, 1, *case["kernel_size"])
    padded = F.pad(input, torch_pad(case["padding"]))
    expected = CONVOLUTIONS[ndim](padded, weight, stride=case["stride"], dilation=case["dilation"]).shape[2:]
    geometry = make_geometry(
        case["input_size"], case["kernel_size"], case["stride"], case["padding"], case["dilation"]
    )
    assert geometry.output_size == tuple(expected)


SAME_CASES = [
    pytest.param(size, kernel, dilation, id=f"{len(size)}d-k{kernel}-d{dilation}")
    for size, kernel, dilation in [
        ((7,), (3,), (1,)),
        ((7,), (4,), (1,)),
        ((7,), (4,), (2,)),
        ((6, 7), (2, 5), (3, 1)),
        ((6, 7), (4, 4), (2, 2)),
        ((4, 5, 6), (2, 3, 4), (1, 2, 1)),
    ]
]


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize(("size", "kernel", "dilation"), SAME_CASES)
def test_same_padding_is_torch_same(size, kernel, dilation):
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(1, 2, *size, dtype=torch.float64, generator=generator)
    weight = torch.randn(3, 2, *kernel, dtype=torch.float64, generator=generator)
    convolution = CONVOLUTIONS[len(size)]
    geometry = make_geometry(size, kernel, padding="same", dilation=dilation)
    ours = convolution(F.pad(input, geometry.torch_pad), weight, dilation=dilation)
    assert torch.allclose(ours, convolution(input, weight, padding="same", dilation=dilation))
    assert geometry.output_size == size
    assert geometry.padding == same_padding(tuple(kernel), tuple(dilation))


ERROR_CASES = [
    pytest.param({"input_size": 5, "kernel_size": 3}, ArgumentError, "input_size=5", id="input-size-int"),
    pytest.param(
        {"input_size": (), "kernel_size": 3}, ArgumentError, r"input_size=\(\)", id="input-size-empty"
    ),
    pytest.param(
        {"input_size": (5, -1), "kernel_size": 1}, ArgumentError, "non-negative", id="negative-size"
    ),
    pytest.param(
        {"input_size": (5.0,), "kernel_size": 1}, ArgumentTypeError, "input_size=5.0", id="float-size"
    ),
    pytest.param({"input_size": (5, 5), "kernel_size": 0}, ArgumentError, "kernel_size=0", id="kernel-zero"),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": (2, 2, 2)},
        ArgumentError,
        r"tuple of 2 ints",
        id="kernel-length",
    ),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": 2.5}, ArgumentTypeError, "kernel_size=2.5", id="kernel-float"
    ),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": True}, ArgumentTypeError, "not a bool", id="kernel-bool"
    ),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": "3"}, ArgumentTypeError, "kernel_size='3'", id="kernel-str"
    ),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": 2, "stride": (1, 0)},
        ArgumentError,
        r"stride=\(1, 0\)",
        id="stride-zero",
    ),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": 2, "dilation": 0},
        ArgumentError,
        "dilation=0",
        id="dilation-zero",
    ),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": 2, "padding": -1},
        ArgumentError,
        "non-negative",
        id="padding-negative",
    ),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": 2, "padding": "full"},
        ArgumentError,
        "padding='full'",
        id="padding-word",
    ),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": 2, "padding": (1, 2, 3)},
        ArgumentError,
        "padding=",
        id="padding-length",
    ),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": 2, "padding": ((1, 2, 3), 1)},
        ArgumentError,
        "padding=",
        id="padding-triple",
    ),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": 2, "padding": 1.5},
        ArgumentTypeError,
        "padding=1.5",
        id="padding-float",
    ),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": 3, "padding": "same", "stride": 2},
        ArgumentError,
        "not supported for strided",
        id="same-strided",
    ),
    pytest.param(
        {"input_size": (2, 5), "kernel_size": 3},
        ArgumentError,
        "fits the padded input",
        id="kernel-too-large",
    ),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": 3, "dilation": 3},
        ArgumentError,
        r"spans \(7, 7\)",
        id="dilated-too-large",
    ),
    pytest.param(
        {"input_size": (5, 5), "kernel_size": 2, "padding_mode": "zero"},
        ArgumentError,
        "padding_mode='zero'",
        id="mode-unknown",
    ),
    pytest.param(
        {"input_size": (3, 5), "kernel_size": 2, "padding": 3, "padding_mode": "reflect"},
        ArgumentError,
        "padding_mode='reflect'",
        id="reflect-too-wide",
    ),
    pytest.param(
        {"input_size": (3, 5), "kernel_size": 2, "padding": 4, "padding_mode": "circular"},
        ArgumentError,
        "padding_mode='circular'",
        id="circular-too-wide",
    ),
    pytest.param(
        {"input_size": (0, 5), "kernel_size": 1, "padding": 1, "padding_mode": "replicate"},
        ArgumentError,
        "padding_mode='replicate'",
        id="replicate-empty",
    ),
]


@pytest.mark.parametrize(("arguments", "error", "message"), ERROR_CASES)
def test_invalid_arguments_raise_naming_argument_and_value(arguments, error, message):
    with pytest.raises(error, match=message):
        make_geometry(**arguments)


def test_errors_are_the_builtin_types():
    with pytest.raises(ValueError):
        make_geometry((5,), 0)
    with pytest.raises(TypeError):
        make_geometry((5,), 1.0)


def test_geometry_is_frozen_hashable_and_cached():
    first = make_geometry((8, 8), 3, padding=1)
    again = make_geometry([8, 8], (3, 3), padding=((1, 1), (1, 1)))
    assert first is again
    assert {first: "cached"}[again] == "cached"
    assert isinstance(first, Geometry)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.stride = (2, 2)


TRANSPOSED_CASES = [
    pytest.param((4, 4), (3, 3), (2, 2), (1, 1), 1, (1, 1), id="2d-output-padding"),
    pytest.param((5,), (4,), (3,), (0,), 2, (1,), id="1d"),
    pytest.param((3, 4, 2), (2, 3, 3), (1, 2, 2), (0, 1, 1), 0, (2, 1, 1), id="3d-dilated"),
]


@pytest.mark.parametrize(("size", "kernel", "stride", "padding", "extra", "dilation"), TRANSPOSED_CASES)
def test_transposed_output_size_equals_torch(size, kernel, stride, padding, extra, dilation):
    convolution = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[len(size)]
    expected = convolution(
        torch.zeros(1, 1, *size),
        torch.zeros(1, 1, *kernel),
        stride=stride,
        padding=padding,
        output_padding=extra,
        dilation=dilation,
    ).shape[2:]
    assert transposed_output_size(size, kernel, stride, padding, extra, dilation) == tuple(expected)


def test_transposed_output_padding_must_be_smaller_than_stride_or_dilation():
    with pytest.raises(ArgumentError, match="output_padding=2"):
        transposed_output_size((4,), (3,), (2,), (0,), 2, (1,))
