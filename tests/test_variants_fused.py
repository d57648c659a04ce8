"""The fused kernels: native C++ loops and the chunked eager path give the same numbers.

Sizes are chosen to hit every code path: several threads, fields not a multiple of the 4-field
block, filters not a multiple of the channel block, taps not a multiple of the tap block.
"""

import pytest
import torch

import anyconv
from anyconv.engine.plan import plan_conv
from anyconv.variants import fused, resolve_variant

# the calls below test the fields path's fused loops: dense layers there, not in the filter blocks;
# two threads, for the splits of the loops' work among them
pytestmark = pytest.mark.usefixtures("fields_for_dense", "two_threads")

SHAPES = [
    pytest.param((1, 300, 70), 64, id="threads-and-remainders"),
    pytest.param((2, 7, 5), 3, id="tiny-groups"),
    pytest.param((1, 130, 37), 129, id="wide-filters"),
    # enough tap blocks that l1's and lp's backward split the taps between two threads
    pytest.param((2, 130, 301), 9, id="taps-split"),
    # fewer fields than filters: max_plus's and min_plus's backward split the filters
    pytest.param((2, 200, 37), 300, id="filters-split"),
    # more taps than the forward's tap block: the reduction goes on from partial values
    pytest.param((1, 37, 2100), 70, id="forward-tap-blocks"),
]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
KERNELS = {
    "l1": (lambda f, w: fused.l1_distances(f, w), lambda f, w, g: fused.l1_backward(f, w, g)),
    "adder": (lambda f, w: fused.l1_distances(f, w), lambda f, w, g: fused.l1_backward(f, w, g, adder=True)),
    "max_plus": (
        lambda f, w: fused.tropical(f, w, minimum=False),
        lambda f, w, g: fused.tropical_backward(f, w, g, minimum=False),
    ),
    "min_plus": (
        lambda f, w: fused.tropical(f, w, minimum=True),
        lambda f, w, g: fused.tropical_backward(f, w, g, minimum=True),
    ),
    "lp-3": (
        lambda f, w: fused.power_sums(f, w, 3.0),
        lambda f, w, g: fused.power_sums_backward(f, w, g, 3.0),
    ),
    "lp-0.7": (
        lambda f, w: fused.power_sums(f, w, 0.7),
        lambda f, w, g: fused.power_sums_backward(f, w, g, 0.7),
    ),
}

needs_native = pytest.mark.skipif(not fused.native_kernels_available(), reason="no C++ compiler here")


def _run(kernel, shape, filters, dtype):
    generator = torch.Generator().manual_seed(0)
    groups, rows, taps = shape
    f = torch.randn(shape, generator=generator, dtype=dtype)
    w = torch.randn(groups, filters, taps, generator=generator, dtype=dtype)
    g = torch.randn(groups, rows, filters, generator=generator, dtype=dtype)
    forward, backward = KERNELS[kernel]
    return forward(f, w), *backward(f, w, g)


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, filters", SHAPES)
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_native_and_eager_paths_agree(kernel, shape, filters, dtype, monkeypatch):
    native = _run(kernel, shape, filters, dtype)
    assert fused.last_path() == "native"
    monkeypatch.setenv("ANYCONV_NATIVE", "0")
    eager = _run(kernel, shape, filters, dtype)
    assert fused.last_path() == "eager"
    tolerance = dict(rtol=1e-4, atol=1e-3) if dtype == torch.float32 else {}
    for got, want in zip(native, eager):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, **tolerance)


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["max_plus", "min_plus"])
@pytest.mark.parametrize(
    "shape, filters",
    # taps enough for the single sweep (kSingleSweepTaps in fused_kernels.cpp), over two tiles of
    # fields; few taps and filters for the two sweeps
    [((1, 70, 600), 64), ((2, 45, 9), 3)],
    ids=["single-sweep", "two-sweeps"],
)
def test_a_tropical_tie_goes_to_the_first_tap_natively_as_in_the_eager_path(
    kernel, shape, filters, dtype, monkeypatch
):
    # small integers: most (field, filter) pairs have several taps at the best value
    generator = torch.Generator().manual_seed(3)
    f = torch.randint(-2, 3, shape, generator=generator).to(dtype)
    w = torch.randint(-2, 3, (shape[0], filters, shape[2]), generator=generator).to(dtype)
    g = torch.randn(shape[0], shape[1], filters, generator=generator, dtype=dtype)
    backward = KERNELS[kernel][1]
    native = backward(f, w, g)
    monkeypatch.setenv("ANYCONV_NATIVE", "0")
    for got, want in zip(native, backward(f, w, g)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_eager_path_for_other_dtypes():
    f, w = torch.randint(-9, 9, (1, 9, 4)), torch.randint(-9, 9, (1, 3, 4))
    expected = -(f[:, :, None] - w[:, None]).abs().sum(-1)
    torch.testing.assert_close(fused.l1_distances(f, w), expected)
    assert fused.last_path() == "eager"


def test_eager_blocks_bound_the_broadcast(monkeypatch):
    monkeypatch.setenv("ANYCONV_NATIVE", "0")
    monkeypatch.setattr(fused, "EAGER_BLOCK_ELEMENTS", 64)
    f, w = torch.randn(2, 50, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    blocks = list(fused._blocks(f, w))
    assert len(blocks) == 25 and all(b.stop - b.start == 2 for b in blocks)
    torch.testing.assert_close(fused.l1_distances(f, w), -torch.cdist(f, w, p=1))


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("shape", [(2, 1003, 37), (2, 130, 301)], ids=["rows", "taps"])
def test_openmp_split_and_python_thread_split_are_bit_identical(kernel, dtype, shape, monkeypatch):
    # a compiler without OpenMP leaves the split to a Python thread pool: same parts, same sums
    openmp = _run(kernel, shape, 64, dtype)
    monkeypatch.setattr(fused, "_splits_rows_itself", lambda source_name: False)
    threads = _run(kernel, shape, 64, dtype)
    for got, want in zip(openmp, threads):
        assert (got is None and want is None) or torch.equal(got, want)


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["l1", "adder", "lp-3", "lp-0.7"])
def test_tap_split_and_row_split_agree(kernel, dtype, monkeypatch):
    # the taps split sums each filter gradient in one buffer, the rows split in one per thread
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert fused._tap_ranges(301, 32, 2) is not None
    taps = _run(kernel, (2, 130, 301), 9, dtype)
    monkeypatch.setattr(fused, "TAP_BLOCKS_PER_THREAD", 10**9)
    rows = _run(kernel, (2, 130, 301), 9, dtype)
    tolerance = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else {}
    for got, want in zip(taps, rows):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, **tolerance)


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["max_plus", "min_plus"])
def test_filter_split_and_row_split_agree(kernel, dtype, monkeypatch):
    # the filter split sums each field gradient over two threads' buffers, the rows split in one
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    fields = torch.empty(2, 200, 37, dtype=dtype)
    assert fused._splits_filters("tropical_backward", fields, 200, 320, 2)
    split = _run(kernel, (2, 200, 37), 300, dtype)
    monkeypatch.setattr(fused, "SPLIT_FILTERS", False)
    rows = _run(kernel, (2, 200, 37), 300, dtype)
    tolerance = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else {}
    for got, want in zip(split, rows):
        torch.testing.assert_close(got, want, **tolerance)


#: id -> (variant, input shape, weight shape, keyword arguments, path the plan takes, last_path()'s answer)
ENGINE_CALLS = {
    "fields-dot": ("dot", (1, 2, 5, 5), (3, 2, 3, 3), {}, "fields", "eager"),
    "pointwise-dot": ("dot", (1, 2, 5, 5), (3, 2, 1, 1), {}, "pointwise", "eager"),
    "fields-l1": ("l1", (1, 2, 5, 5), (3, 2, 3, 3), {}, "fields", "native"),
    "tap-loops-l1": ("l1", (1, 4, 5, 5), (4, 1, 3, 3), {"groups": 4}, "tap loops", "native"),
    "tap-products-cosine": ("cosine", (1, 4, 5, 5), (4, 1, 3, 3), {"groups": 4}, "tap products", "native"),
}


@needs_native
@pytest.mark.parametrize("case", ENGINE_CALLS)
def test_last_path_answers_for_the_last_call(case, monkeypatch):
    pytest.importorskip("triton")
    variant, input_shape, weight_shape, kwargs, path, answer = ENGINE_CALLS[case]
    input, weight = torch.randn(input_shape), torch.randn(weight_shape)
    monkeypatch.setenv("ANYCONV_BACKEND", "triton")
    fused.l1_distances(torch.randn(1, 3, 2), torch.randn(1, 2, 2))
    assert fused.last_path() == "triton"
    monkeypatch.setenv("ANYCONV_BACKEND", "auto")
    plan = plan_conv(input, weight, resolve_variant(variant), 1, 0, 1, kwargs.get("groups", 1), "zeros", None)
    assert plan.path == path
    anyconv.generalized_conv(input, weight, variant, **kwargs)
    assert fused.last_path() == answer


def test_last_path_answers_eager_for_the_loops_eager_twins(monkeypatch):
    monkeypatch.setenv("ANYCONV_NATIVE", "0")
    anyconv.generalized_conv(torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3), "l1", groups=4)
    assert fused.last_path() == "eager"


@needs_native
@pytest.mark.parametrize("kernel", ["l1", "max_plus"])
def test_padded_filters_follow_in_place_changes_and_are_dropped_with_their_tensor(kernel):
    # the engine hands every chunk the same filters tensor; its padded copy is reused only while
    # that tensor is unchanged, and forgotten once it is freed
    forward = KERNELS[kernel][0]
    generator = torch.Generator().manual_seed(3)
    fields = torch.randn(1, 40, 12, generator=generator, dtype=torch.float64)
    filters = torch.randn(1, 9, 12, generator=generator, dtype=torch.float64)

    def reference(weights):
        if kernel == "l1":
            return -(fields.unsqueeze(2) - weights.unsqueeze(1)).abs().sum(-1)
        return (fields.unsqueeze(2) + weights.unsqueeze(1)).amax(-1)

    assert torch.allclose(forward(fields, filters), reference(filters))
    assert torch.allclose(forward(fields[:, :7], filters), reference(filters)[:, :7])
    filters.mul_(-2.0).add_(0.5)  # in place: the same tensor object, a new version
    assert torch.allclose(forward(fields, filters), reference(filters))
    filters[0, 3, 5] = 7.0  # an in-place write through an index
    assert torch.allclose(forward(fields, filters), reference(filters))
    del filters
    assert fused._last_padded is None


@needs_native
@pytest.mark.parametrize("name", ["l1", "max_plus"])
def test_inference_mode_calls_of_many_chunks_give_the_no_grad_numbers(name):
    # filters made under inference_mode have no version counter: the loops pad them per chunk
    from anyconv.engine.fields_plan import fields_plan

    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 64, 48, generator=generator)
    w = torch.randn(6, 8, 3, 3, generator=generator)
    plan = plan_conv(x, w, resolve_variant(name), 1, 1, 1, 1, "zeros", 2**18)
    assert plan.path == "fields"
    assert len(fields_plan(x, w, resolve_variant(name), plan.geometry, 1, plan.budget).chunks) > 2
    with torch.no_grad():
        expected = anyconv.generalized_conv(x, w, name, padding=1, memory_budget=2**18)
    with torch.inference_mode():
        got = anyconv.generalized_conv(x, w, name, padding=1, memory_budget=2**18)
        again = anyconv.generalized_conv(x.clone(), w.clone(), name, padding=1, memory_budget=2**18)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(again, expected)
