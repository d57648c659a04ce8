# ruff: noqa: E501  (one case per line: the table reads as a table)
"""The fold of field gradients into a chunk's slab (engine/fields_fold.py), native and eager.

Against torch's col2im (``F.fold``) in 2-D and a loop over every (field, tap) pair in any N, in
float64; the native fold against the eager one bit for bit in float32 and float64, NaN and inf
included; bfloat16 and float16 against float64; and the fields path's backward taking it.
"""

import importlib
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anyconv
from anyconv.geometry import make_geometry
from anyconv.variants import fused

FOLD = importlib.import_module("anyconv.engine.fields_fold")

needs_native = pytest.mark.skipif(not fused.native_kernels_available(), reason="no C++ compiler here")
#: two threads, for the fold's split of its slab among them
pytestmark = pytest.mark.usefixtures("two_threads")

# chunk input size, kernel, stride, dilation, samples, groups, channels per group
CASES = [
    {
        "id": "1-D",
        "size": (9,),
        "kernel": 3,
        "stride": 1,
        "dilation": 1,
        "samples": 2,
        "groups": 1,
        "per_group": 5,
    },
    {
        "id": "1-D-strided-dilated",
        "size": (17,),
        "kernel": 4,
        "stride": 3,
        "dilation": 2,
        "samples": 1,
        "groups": 2,
        "per_group": 3,
    },
    {
        "id": "2-D",
        "size": (7, 6),
        "kernel": (3, 2),
        "stride": (2, 1),
        "dilation": (1, 2),
        "samples": 3,
        "groups": 2,
        "per_group": 4,
    },
    {
        "id": "2-D-stride-over-kernel",
        "size": (11, 10),
        "kernel": 2,
        "stride": 3,
        "dilation": 1,
        "samples": 2,
        "groups": 1,
        "per_group": 6,
    },
    {
        "id": "2-D-wide-channels",
        "size": (8, 8),
        "kernel": 4,
        "stride": 1,
        "dilation": 1,
        "samples": 1,
        "groups": 1,
        "per_group": 37,
    },
    {
        "id": "3-D",
        "size": (5, 6, 7),
        "kernel": 3,
        "stride": 1,
        "dilation": 1,
        "samples": 1,
        "groups": 1,
        "per_group": 8,
    },
    {
        "id": "3-D-strided",
        "size": (6, 7, 5),
        "kernel": (2, 3, 1),
        "stride": (2, 1, 2),
        "dilation": (1, 2, 1),
        "samples": 2,
        "groups": 3,
        "per_group": 2,
    },
    {
        "id": "4-D",
        "size": (4, 5, 3, 4),
        "kernel": 2,
        "stride": (1, 2, 1, 1),
        "dilation": 1,
        "samples": 1,
        "groups": 1,
        "per_group": 3,
    },
    {
        "id": "one-position",
        "size": (3, 3),
        "kernel": 3,
        "stride": 1,
        "dilation": 1,
        "samples": 2,
        "groups": 1,
        "per_group": 2,
    },
]


def geometry_of(case):
    return make_geometry(case["size"], case["kernel"], stride=case["stride"], dilation=case["dilation"])


def gradients_of(case, dtype=torch.float64, seed=0):
    geometry = geometry_of(case)
    generator = torch.Generator().manual_seed(seed)
    shape = (
        case["groups"],
        case["samples"] * geometry.num_positions,
        geometry.kernel_volume * case["per_group"],
    )
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype), geometry


def naive_fold(grad_fields, geometry, samples):
    """Every (field, tap) pair's gradient added at the slab position that tap reads."""
    groups, _, width = grad_fields.shape
    per_group = width // geometry.kernel_volume
    slab = torch.zeros((samples, *geometry.padded_size, groups * per_group), dtype=torch.float64)
    values = grad_fields.double().reshape(
        groups, samples, geometry.num_positions, geometry.kernel_volume, per_group
    )
    outputs = list(itertools.product(*map(range, geometry.output_size)))
    taps = list(itertools.product(*map(range, geometry.kernel_size)))
    for place, position in enumerate(outputs):
        for flat_tap, tap in enumerate(taps):
            at = tuple(p * s + t * d for p, s, t, d in zip(position, geometry.stride, tap, geometry.dilation))
            for group in range(groups):
                channels = slice(group * per_group, (group + 1) * per_group)
                slab[(slice(None), *at, channels)] += values[group, :, place, flat_tap]
    return slab


def eager_fold(grad_fields, geometry, samples, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(FOLD, "_native", lambda tensor: None)
        return FOLD.fold_fields(grad_fields, geometry, samples)


@needs_native
@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_native_fold_equals_the_naive_sum(case):
    grad_fields, geometry = gradients_of(case)
    assert FOLD._native(grad_fields) is not None
    folded = FOLD.fold_fields(grad_fields, geometry, case["samples"])
    torch.testing.assert_close(
        folded, naive_fold(grad_fields, geometry, case["samples"]), rtol=1e-12, atol=1e-12
    )


@needs_native
@pytest.mark.parametrize(
    "case", [case for case in CASES if len(case["size"]) == 2], ids=lambda case: case["id"]
)
def test_native_fold_equals_torch_col2im(case):
    grad_fields, geometry = gradients_of(case)
    groups, samples, per_group = case["groups"], case["samples"], case["per_group"]
    folded = FOLD.fold_fields(grad_fields, geometry, samples)
    # torch's columns: (b, C * K, L), channel-major rows
    columns = (
        grad_fields.reshape(groups, samples, geometry.num_positions, geometry.kernel_volume, per_group)
        .permute(1, 0, 4, 3, 2)
        .reshape(samples, groups * per_group * geometry.kernel_volume, geometry.num_positions)
    )
    reference = F.fold(
        columns,
        geometry.padded_size,
        geometry.kernel_size,
        dilation=geometry.dilation,
        stride=geometry.stride,
    )
    torch.testing.assert_close(folded.movedim(-1, 1), reference, rtol=1e-12, atol=1e-12)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_native_fold_is_the_eager_fold_bit_for_bit(case, dtype, monkeypatch):
    grad_fields, geometry = gradients_of(case, dtype)
    flat = grad_fields.view(-1)
    # hostile values: the same NaN, inf and huge sums in both
    flat[0], flat[-1], flat[flat.numel() // 2] = float("nan"), float("inf"), torch.finfo(dtype).max
    folded = FOLD.fold_fields(grad_fields, geometry, case["samples"])
    eager = eager_fold(grad_fields, geometry, case["samples"], monkeypatch)
    assert torch.equal(folded.isnan(), eager.isnan())
    assert torch.equal(folded.nan_to_num(), eager.nan_to_num())


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES[:6], ids=[case["id"] for case in CASES[:6]])
def test_native_fold_in_half_precision_sums_in_float(case, dtype):
    grad_fields, geometry = gradients_of(case, dtype)
    folded = FOLD.fold_fields(grad_fields, geometry, case["samples"])
    assert folded.dtype == dtype
    # each sum rounded once: within half a unit of the float64 sum of the rounded inputs
    reference = naive_fold(grad_fields, geometry, case["samples"])
    torch.testing.assert_close(folded.double(), reference, rtol=torch.finfo(dtype).eps, atol=1e-6)


@st.composite
def fold_cases(draw):
    ndim = draw(st.integers(1, 3))
    kernel = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    stride = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    dilation = tuple(draw(st.lists(st.integers(1, 2), min_size=ndim, max_size=ndim)))
    size = tuple(draw(st.integers(d * (k - 1) + 1, d * (k - 1) + 6)) for k, d in zip(kernel, dilation))
    return {
        "size": size,
        "kernel": kernel,
        "stride": stride,
        "dilation": dilation,
        "samples": draw(st.integers(1, 2)),
        "groups": draw(st.integers(1, 2)),
        "per_group": draw(st.integers(1, 5)),
    }


@needs_native
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=fold_cases(), seed=st.integers(0, 2**16))
def test_native_fold_on_random_geometries(case, seed):
    grad_fields, geometry = gradients_of(case, seed=seed)
    folded = FOLD.fold_fields(grad_fields, geometry, case["samples"])
    torch.testing.assert_close(
        folded, naive_fold(grad_fields, geometry, case["samples"]), rtol=1e-12, atol=1e-12
    )


def test_eager_fold_equals_the_naive_sum(monkeypatch):
    for case in CASES:
        grad_fields, geometry = gradients_of(case)
        eager = eager_fold(grad_fields, geometry, case["samples"], monkeypatch)
        torch.testing.assert_close(
            eager, naive_fold(grad_fields, geometry, case["samples"]), rtol=1e-12, atol=1e-12
        )


def test_fold_of_tracked_gradients_stays_eager():
    # a gradient that autograd records (a second derivative) is folded by differentiable adds
    grad_fields, _ = gradients_of(CASES[0])
    assert FOLD._native(grad_fields.requires_grad_()) is None


@needs_native
@pytest.mark.parametrize("variant", ["l1", "max_plus"])
def test_fields_backward_folds_natively(variant, monkeypatch, no_budget_floor):
    """The fields path's backward of a dense layer goes through the native fold, with the eager
    fold's gradients (bit for bit in float32) and many chunks."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 9, 8, generator=generator, requires_grad=True)
    w = torch.randn(5, 6, 3, 3, generator=generator, requires_grad=True)
    calls = []
    native = FOLD._native

    def counted(tensor):
        function = native(tensor)
        calls.append(function is not None)
        return function

    def gradients():
        y = anyconv.generalized_conv(x, w, variant, padding=1, stride=(1, 2), memory_budget=2**12)
        return torch.autograd.grad(y, (x, w), torch.ones_like(y))

    monkeypatch.setattr(FOLD, "_native", counted)
    natively = gradients()
    assert len(calls) > 1 and all(calls)
    monkeypatch.setattr(FOLD, "_native", lambda tensor: None)
    eagerly = gradients()
    for ours, theirs in zip(natively, eagerly):
        assert torch.equal(ours, theirs)
    assert math.isfinite(natively[0].sum().item())


@st.composite
def regions(draw, geometry):
    """A start inside the slab and a size that may run past its end (places no field reaches)."""
    start = tuple(draw(st.integers(0, size - 1)) for size in geometry.padded_size)
    size = tuple(draw(st.integers(1, whole - first + 2)) for first, whole in zip(start, geometry.padded_size))
    return start, size


def folded_region(slab, start, size, bias):
    """The reference: the slab's region (zeros past its end) channels first, plus the bias."""
    ndim = len(start)
    padded = F.pad(slab.movedim(-1, 1), tuple(amount for extent in reversed(size) for amount in (0, extent)))
    region = padded[(slice(None), slice(None), *(slice(s, s + n) for s, n in zip(start, size)))]
    return region if bias is None else region + bias.reshape(-1, *(1,) * ndim)


@needs_native
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=fold_cases(), seed=st.integers(0, 2**16), data=st.data())
def test_fold_into_is_the_folds_region_plus_the_bias(case, seed, data):
    for dtype in (torch.float32, torch.float64):
        grad_fields, geometry = gradients_of(case, dtype, seed=seed)
        start, size = data.draw(regions(geometry))
        channels = case["groups"] * case["per_group"]
        bias = data.draw(st.sampled_from([None, torch.randn(channels, dtype=dtype)]))
        output = torch.full((case["samples"], channels, *size), float("nan"), dtype=dtype)
        assert FOLD.fold_into(grad_fields, geometry, output, start, bias)
        slab = FOLD.fold_fields(grad_fields, geometry, case["samples"])
        # the same sums in the same order, the bias added last: bit for bit
        assert torch.equal(output, folded_region(slab, start, size, bias))


@needs_native
def test_fold_into_keeps_nan_and_inf():
    case = CASES[2]
    grad_fields, geometry = gradients_of(case, torch.float32)
    flat = grad_fields.view(-1)
    flat[0], flat[-1] = float("nan"), float("inf")
    start, size = (1, 0), tuple(extent - 1 for extent in geometry.padded_size)
    output = torch.empty(case["samples"], case["groups"] * case["per_group"], *size)
    assert FOLD.fold_into(grad_fields, geometry, output, start, None)
    reference = folded_region(FOLD.fold_fields(grad_fields, geometry, case["samples"]), start, size, None)
    assert torch.equal(output.isnan(), reference.isnan())
    assert torch.equal(output.nan_to_num(), reference.nan_to_num())


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fold_into_in_half_precision_rounds_once(dtype):
    case = CASES[2]
    grad_fields, geometry = gradients_of(case, dtype)
    bias = torch.randn(case["groups"] * case["per_group"]).to(dtype)
    size = geometry.padded_size
    output = torch.empty(case["samples"], bias.numel(), *size, dtype=dtype)
    assert FOLD.fold_into(grad_fields, geometry, output, (0, 0), bias)
    reference = folded_region(naive_fold(grad_fields, geometry, case["samples"]), (0, 0), size, bias.double())
    torch.testing.assert_close(output.double(), reference, rtol=torch.finfo(dtype).eps, atol=1e-6)


def test_fold_into_declines_what_it_cannot_write(monkeypatch):
    grad_fields, geometry = gradients_of(CASES[2], torch.float32)
    channels = CASES[2]["groups"] * CASES[2]["per_group"]
    # a channels-last output, a graph being recorded, or no native fold: nothing written
    output = torch.zeros(CASES[2]["samples"], *geometry.padded_size, channels).movedim(-1, 1)
    assert not FOLD.fold_into(grad_fields, geometry, output, (0, 0), None)
    assert not output.any()
    assert not FOLD.fold_into(grad_fields.requires_grad_(), geometry, output.contiguous(), (0, 0), None)
    monkeypatch.setattr(FOLD, "_native", lambda tensor, name="fold_fields": None)
    assert not FOLD.fold_into(grad_fields.detach(), geometry, output.contiguous(), (0, 0), None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64, torch.int16, torch.int64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (2, 64, 16), (4, 17, 33)])
def test_transposed_matrices_is_torchs_transpose(dtype, shape, monkeypatch):
    matrices = (torch.randn(shape) * 100).to(dtype)
    expected = matrices.mT.contiguous()
    for native in ("1", "0"):
        monkeypatch.setenv("ANYCONV_NATIVE", native)
        transposed = FOLD.transposed_matrices(matrices)
        assert transposed.is_contiguous() and torch.equal(transposed, expected)
    # a strided view is read as its values
    assert torch.equal(FOLD.transposed_matrices(matrices.mT), matrices.contiguous())
