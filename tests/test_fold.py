"""fold (col2im): equal to F.fold in 2-D, to unfoldNd's foldNd in 1-D and 3-D, to a naive loop for N=4, 5."""

import math
import random

import pytest
import torch
import torch.nn.functional as F
import unfoldNd
from reference import naive_fold, output_size, random_geometry

import anyconv
from anyconv import ArgumentError, ArgumentTypeError


def random_cases(ndim: int, count: int, seed: int, **limits) -> list:
    rng = random.Random(seed)
    return [pytest.param(random_geometry(rng, ndim, **limits), id=f"{ndim}d-{i}") for i in range(count)]


def tiling_case(input_size, kernel_size, padding=0, dilation=1, name=""):
    """Fields that tile the padded input (the kernel as large as its stride): col2im's one-copy form."""
    ndim = len(input_size)
    case = {
        "input_size": list(input_size),
        "kernel_size": list(kernel_size),
        "stride": list(kernel_size),
        "dilation": [dilation] * ndim,
        "padding": [(padding, padding)] * ndim,
        "symmetric": True,
    }
    return pytest.param(case, id=f"tiles-{name or ndim}")


#: fields that tile the input, each position at one tap of one field (functional.im2col.tiles)
TILING = [
    tiling_case((8, 6), (2, 2), name="2x2"),
    tiling_case((4, 9), (2, 3), name="2x3"),
    tiling_case((12,), (4,), name="1d"),
    tiling_case((2, 4, 6), (1, 2, 3), name="3d"),
    tiling_case((6, 4), (1, 2), padding=1, dilation=1, name="padded"),
    tiling_case((3, 5), (1, 1), dilation=3, name="1x1-dilated"),
    tiling_case((4, 2, 2, 4), (2, 2, 1, 2), name="4d"),
]

GEOMETRIES = (
    TILING
    + random_cases(1, 50, 101)
    + random_cases(2, 100, 102)
    + random_cases(3, 40, 103, largest_size=6)
    + random_cases(4, 15, 104, largest_size=4, largest_kernel=2)
    + random_cases(5, 6, 105, largest_size=3, largest_kernel=2)
)


def anyconv_padding(case: dict):
    if case["symmetric"]:
        return tuple(before for before, _ in case["padding"])
    return tuple(tuple(pair) for pair in case["padding"])


def call_fold(columns: torch.Tensor, case: dict) -> torch.Tensor:
    return anyconv.fold(
        columns,
        tuple(case["input_size"]),
        tuple(case["kernel_size"]),
        dilation=tuple(case["dilation"]),
        padding=anyconv_padding(case),
        stride=tuple(case["stride"]),
    )


def reference_fold(columns: torch.Tensor, case: dict) -> torch.Tensor:
    """torch's F.fold (2-D) or unfoldNd.foldNd (1-D, 3-D) onto the padded size, then cropped."""
    ndim = len(case["kernel_size"])
    arguments = dict(kernel_size=case["kernel_size"], dilation=case["dilation"], stride=case["stride"])
    if ndim > 3:
        return naive_fold(columns, case["input_size"], padding=case["padding"], **arguments)
    padded_size = [
        size + before + after for size, (before, after) in zip(case["input_size"], case["padding"])
    ]
    fold = F.fold if ndim == 2 else unfoldNd.foldNd
    padded = fold(columns, tuple(padded_size), **arguments)
    crop = [slice(before, before + size) for size, (before, _) in zip(case["input_size"], case["padding"])]
    return padded[(slice(None), slice(None), *crop)]


def random_columns(case: dict, batch: int = 2, channels: int = 3, **options) -> torch.Tensor:
    padded_size = [
        size + before + after for size, (before, after) in zip(case["input_size"], case["padding"])
    ]
    blocks = math.prod(output_size(padded_size, case["kernel_size"], case["stride"], case["dilation"]))
    rows = channels * math.prod(case["kernel_size"])
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, rows, blocks, generator=generator, dtype=torch.float64, **options)


@pytest.mark.parametrize("case", GEOMETRIES)
def test_fold_equals_reference(case):
    columns = random_columns(case)
    assert torch.allclose(call_fold(columns, case), reference_fold(columns, case), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("case", GEOMETRIES[::8])
def test_fold_of_unfold_is_input_times_overlap_count(case):
    input = torch.randn(2, 3, *case["input_size"], dtype=torch.float64)
    arguments = dict(
        kernel_size=tuple(case["kernel_size"]),
        dilation=tuple(case["dilation"]),
        padding=anyconv_padding(case),
        stride=tuple(case["stride"]),
    )
    overlap = anyconv.fold(anyconv.unfold(torch.ones_like(input), **arguments), input.shape[2:], **arguments)
    assert torch.allclose(
        anyconv.fold(anyconv.unfold(input, **arguments), input.shape[2:], **arguments),
        input * overlap,
        rtol=1e-13,
        atol=1e-13,
    )


@pytest.mark.parametrize("case", GEOMETRIES[::20])
def test_unbatched_columns_give_an_unbatched_image(case):
    columns = random_columns(case, batch=1)
    assert torch.equal(call_fold(columns[0], case), call_fold(columns, case)[0])


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int32, torch.int64, torch.float16])
def test_integer_dtypes_fold_exactly(dtype):
    case = {
        "input_size": [5, 4, 3],
        "kernel_size": [3, 2, 2],
        "stride": [1, 1, 2],
        "dilation": [1, 2, 1],
        "padding": [(1, 1), (0, 1), (1, 0)],
        "symmetric": False,
    }
    values = torch.randint(0, 4, random_columns(case).shape)
    folded = call_fold(values.to(dtype), case)
    assert folded.dtype == dtype
    assert torch.equal(folded.double(), call_fold(values.double(), case))


def test_fold_is_exact_past_2_to_the_24_output_elements():
    # every output element gets its own index as value: a float32 index would lose the odd ones here
    height, width = 4097, 4097
    assert height * width > 2**24
    columns = torch.arange(height * width, dtype=torch.int32).view(1, 1, -1)
    image = anyconv.fold(columns, (height, width), 1)
    assert torch.equal(image.view(-1), columns.view(-1))
    assert image[0, 0, -1, -1].item() == height * width - 1


def test_fold_with_overlap_is_exact_past_2_to_the_24_output_elements():
    length = 2**24 + 5
    columns = torch.ones(1, 2, length - 1, dtype=torch.int32)
    image = anyconv.fold(columns, (length,), (2,))
    assert image.shape == (1, 1, length)
    assert image[0, 0, 0] == 1 and image[0, 0, -1] == 1 and image[0, 0, 1:-1].eq(2).all()


GRADIENT_CASES = [
    pytest.param({**random_geometry(random.Random(41), 2), "input_size": [5, 4]}, id="2d"),
    pytest.param(random_geometry(random.Random(42), 1), id="1d"),
    pytest.param(
        {
            "input_size": [4, 3, 3],
            "kernel_size": [2, 2, 3],
            "stride": [1, 2, 1],
            "dilation": [2, 1, 1],
            "padding": [(1, 2), (0, 1), (2, 0)],
            "symmetric": False,
        },
        id="3d-asymmetric",
    ),
    pytest.param(random_geometry(random.Random(44), 4, 3, 2), id="4d"),
    *TILING,
]


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_fold_gradients(case):
    columns = random_columns(case, batch=1, channels=1, requires_grad=True)
    function = lambda tensor: call_fold(tensor, case)  # noqa: E731
    assert torch.autograd.gradcheck(function, (columns,))
    assert torch.autograd.gradgradcheck(function, (columns,))


ERROR_CASES = [
    pytest.param("columns", (4, 4), 2, {}, ArgumentTypeError, "input=", id="not-a-tensor"),
    pytest.param(torch.zeros(1, 1, 4, 9), (4, 4), 2, {}, ArgumentError, "expected 3 dimensions", id="rank"),
    pytest.param(torch.zeros(1, 5, 9), (4, 4), 2, {}, ArgumentError, "multiple of 4 rows", id="rows"),
    pytest.param(torch.zeros(1, 4, 8), (4, 4), 2, {}, ArgumentError, "9 blocks", id="blocks"),
    pytest.param(torch.zeros(1, 4, 9), (4, 0), 2, {}, ArgumentError, "output_size=", id="empty-output"),
    pytest.param(
        torch.zeros(1, 4, 9), (4, 4), 2, {"dilation": -1}, ArgumentError, "dilation=-1", id="dilation"
    ),
    pytest.param(
        torch.zeros(1, 4, 9), (4, 4), 2, {"padding": "full"}, ArgumentError, "padding='full'", id="pad"
    ),
]


@pytest.mark.parametrize(("input", "output_size", "kernel_size", "options", "error", "message"), ERROR_CASES)
def test_bad_arguments_raise_naming_them(input, output_size, kernel_size, options, error, message):
    with pytest.raises(error, match=message):
        anyconv.fold(input, output_size, kernel_size, **options)


def test_fold_one_element_tuples_mean_one_spatial_dimension():
    # regression: (5,) and (3,) were taken as 2-D, so fold refused unfold's own 1-D columns
    input = torch.randn(2, 3, 5, dtype=torch.float64)
    columns = anyconv.unfold(input, (3,))
    assert anyconv.fold(columns, (5,), (3,)).shape == (2, 3, 5)
    assert anyconv.fold(columns, [5], 3).shape == (2, 3, 5)


def test_padded_fold_is_contiguous_like_torch_fold():
    # regression: the crop of the padded image was returned as a view, so .view() failed where F.fold's works
    columns = torch.randn(2, 18, 25)
    image = anyconv.fold(columns, (5, 5), 3, padding=1)
    assert image.is_contiguous()
    assert image.view(2, -1).shape == (2, 50)
