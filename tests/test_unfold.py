"""unfold (im2col): equal to F.unfold in 2-D, to unfoldNd in 1-D and 3-D, to a naive loop for N=4, 5."""

import random

import pytest
import torch
import torch.nn.functional as F
import unfoldNd
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import fits_mode, naive_unfold, random_geometry, torch_pad

import anyconv
from anyconv import ArgumentError, ArgumentTypeError

TORCH_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def random_cases(ndim: int, count: int, seed: int, **limits) -> list:
    rng = random.Random(seed)
    return [pytest.param(random_geometry(rng, ndim, **limits), id=f"{ndim}d-{i}") for i in range(count)]


GEOMETRIES = (
    random_cases(1, 60, 1)
    + random_cases(2, 120, 2)
    + random_cases(3, 50, 3, largest_size=6)
    + random_cases(4, 20, 4, largest_size=4, largest_kernel=2)
    + random_cases(5, 8, 5, largest_size=3, largest_kernel=2)
)


def anyconv_padding(case: dict):
    # the two spellings users write: an int per dimension when symmetric, else (before, after) pairs
    if case["symmetric"]:
        return tuple(before for before, _ in case["padding"])
    return tuple(tuple(pair) for pair in case["padding"])


def call_unfold(input: torch.Tensor, case: dict, mode: str = "zeros") -> torch.Tensor:
    return anyconv.unfold(
        input,
        tuple(case["kernel_size"]),
        dilation=tuple(case["dilation"]),
        padding=anyconv_padding(case),
        stride=tuple(case["stride"]),
        padding_mode=mode,
    )


def reference_unfold(input: torch.Tensor, case: dict, mode: str = "zeros") -> torch.Tensor:
    """torch's F.unfold (2-D) or unfoldNd (1-D, 3-D) after F.pad; the naive loop beyond."""
    ndim = len(case["kernel_size"])
    arguments = dict(kernel_size=case["kernel_size"], dilation=case["dilation"], stride=case["stride"])
    if ndim > 3:
        return naive_unfold(input, padding=case["padding"], mode=mode, **arguments)
    padded = F.pad(input, torch_pad(case["padding"]), mode=TORCH_MODE[mode])
    if ndim == 2:
        return F.unfold(padded, **arguments)
    return unfoldNd.unfoldNd(padded, **arguments)


def random_input(case: dict, batch: int = 2, channels: int = 3, seed: int = 0, **options) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, channels, *case["input_size"])
    return torch.randn(shape, generator=generator, dtype=torch.float64, **options)


@pytest.mark.parametrize("case", GEOMETRIES)
def test_unfold_equals_reference(case):
    input = random_input(case)
    assert torch.equal(call_unfold(input, case), reference_unfold(input, case))


MODE_CASES = [
    pytest.param(mode, geometry.values[0], id=f"{mode}-{geometry.id}")
    for mode in ("reflect", "replicate", "circular")
    for geometry in random_cases(1, 8, 11)
    + random_cases(2, 12, 12)
    + random_cases(3, 6, 13, largest_size=5)
    + random_cases(4, 3, 14, largest_size=3, largest_kernel=2)
    if fits_mode(geometry.values[0], mode)
]


@pytest.mark.parametrize(("mode", "case"), MODE_CASES)
def test_unfold_padding_modes_equal_pad_then_unfold(mode, case):
    input = random_input(case, batch=1, channels=2)
    assert torch.equal(call_unfold(input, case, mode), reference_unfold(input, case, mode))


@pytest.mark.parametrize("case", GEOMETRIES[::10])
def test_unbatched_input_gives_unbatched_columns(case):
    input = random_input(case, batch=1)
    assert torch.equal(call_unfold(input[0], case), call_unfold(input, case)[0])


def test_unbatched_2d_with_tuple_kernel_matches_torch():
    input = torch.randn(3, 6, 5, dtype=torch.float64)
    assert torch.equal(anyconv.unfold(input, (2, 3), padding=1), F.unfold(input, (2, 3), padding=1))


INTEGER_AND_HALF = [torch.int8, torch.uint8, torch.int32, torch.int64, torch.bool, torch.float16]


@pytest.mark.parametrize("dtype", INTEGER_AND_HALF)
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_every_copyable_dtype_unfolds_like_float64(dtype, mode):
    case = random_geometry(random.Random(7), 3)
    case["padding"], case["symmetric"] = [(1, 1)] * 3, True
    case["input_size"] = [4, 5, 3]
    values = torch.randint(0, 2 if dtype == torch.bool else 100, (2, 3, 4, 5, 3), dtype=torch.int64)
    columns = call_unfold(values.to(dtype), case, mode)
    assert columns.dtype == dtype
    assert torch.equal(columns.double(), call_unfold(values.double(), case, mode))


ADJOINT_CASES = random_cases(1, 5, 21) + random_cases(2, 10, 22) + random_cases(3, 5, 23, largest_size=5)
ADJOINT_CASES += random_cases(4, 3, 24, largest_size=4, largest_kernel=2)


@pytest.mark.parametrize("case", ADJOINT_CASES)
def test_unfold_is_the_adjoint_of_fold(case):
    input = random_input(case)
    columns = call_unfold(input, case)
    other = torch.randn_like(columns)
    folded = anyconv.fold(
        other,
        tuple(case["input_size"]),
        tuple(case["kernel_size"]),
        dilation=tuple(case["dilation"]),
        padding=anyconv_padding(case),
        stride=tuple(case["stride"]),
    )
    assert torch.allclose((columns * other).sum(), (input * folded).sum(), rtol=1e-12, atol=1e-12)


GRADIENT_CASES = [
    pytest.param("zeros", {**random_geometry(random.Random(31), 2), "input_size": [5, 4]}, id="2d-zeros"),
    pytest.param("zeros", random_geometry(random.Random(32), 1), id="1d-zeros"),
    pytest.param("zeros", random_geometry(random.Random(33), 4, 3, 2), id="4d-zeros"),
    pytest.param(
        "reflect",
        {
            "input_size": [4, 3, 3],
            "kernel_size": [2, 2, 3],
            "stride": [1, 2, 1],
            "dilation": [2, 1, 1],
            "padding": [(1, 2), (0, 1), (2, 0)],
            "symmetric": False,
        },
        id="3d-reflect-asymmetric",
    ),
    pytest.param(
        "circular",
        {
            "input_size": [3, 4],
            "kernel_size": [3, 2],
            "stride": [2, 1],
            "dilation": [1, 2],
            "padding": [(1, 1), (2, 1)],
            "symmetric": False,
        },
        id="2d-circular",
    ),
]


@pytest.mark.parametrize(("mode", "case"), GRADIENT_CASES)
def test_unfold_gradients(mode, case):
    input = random_input(case, batch=1, channels=2, requires_grad=True)
    function = lambda tensor: call_unfold(tensor, case, mode)  # noqa: E731
    assert torch.autograd.gradcheck(function, (input,))
    assert torch.autograd.gradgradcheck(function, (input,))


@settings(max_examples=60, deadline=None)
@given(
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
def test_unfold_equals_torch_over_random_2d_geometries(size, kernel, stride, dilation, padding):
    spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    input = torch.randn(1, 2, *size, dtype=torch.float64)
    arguments = dict(kernel_size=kernel, stride=stride, dilation=dilation, padding=padding)
    if any(span > s + 2 * p for span, s, p in zip(spans, size, padding)):
        with pytest.raises(ArgumentError, match="kernel_size"):
            anyconv.unfold(input, **arguments)
    else:
        assert torch.equal(anyconv.unfold(input, **arguments), F.unfold(input, **arguments))


ERROR_CASES = [
    pytest.param([[1.0]], 2, {}, ArgumentTypeError, "input=", id="not-a-tensor"),
    pytest.param(torch.zeros(2, 3), (2, 2), {}, ArgumentError, "expected 4 dimensions", id="rank-too-low"),
    pytest.param(torch.zeros(2), 1, {}, ArgumentError, "at least one spatial", id="no-spatial-dimension"),
    pytest.param(torch.zeros(1, 1, 3, 3), 4, {}, ArgumentError, "kernel_size=", id="kernel-too-large"),
    pytest.param(torch.zeros(1, 1, 3, 3), 2, {"stride": 0}, ArgumentError, "stride=0", id="stride-zero"),
    pytest.param(torch.zeros(1, 1, 3, 3), 2.0, {}, ArgumentTypeError, "kernel_size=2.0", id="float-kernel"),
    pytest.param(
        torch.zeros(1, 1, 3, 3),
        2,
        {"padding_mode": "mirror"},
        ArgumentError,
        "padding_mode='mirror'",
        id="unknown-mode",
    ),
    pytest.param(
        torch.zeros(1, 1, 3, 3),
        2,
        {"padding": 3, "padding_mode": "reflect"},
        ArgumentError,
        "padding_mode='reflect'",
        id="reflect-too-wide",
    ),
]


@pytest.mark.parametrize(("input", "kernel_size", "options", "error", "message"), ERROR_CASES)
def test_bad_arguments_raise_naming_them(input, kernel_size, options, error, message):
    with pytest.raises(error, match=message):
        anyconv.unfold(input, kernel_size, **options)


def test_unfold_never_aliases_its_input():
    # regression: with a 1x1 kernel the permute + reshape was a view, so writing the columns wrote the input
    input = torch.zeros(1, 2, 3, 3)
    columns = anyconv.unfold(input, 1)
    columns += 1
    assert input.eq(0).all()


def test_unfold_under_vmap_equals_a_loop():
    inputs = torch.randn(3, 2, 2, 5, 5, dtype=torch.float64)
    mapped = torch.vmap(lambda input: anyconv.unfold(input, 3, padding=1))(inputs)
    assert torch.equal(mapped, torch.stack([anyconv.unfold(input, 3, padding=1) for input in inputs]))
