"""A backward's filter gradient summed over its chunks where it is computed (variants/filter_sums.py).

The fused backwards (``l1``, ``lp``, ``max_plus``, ``min_plus``) add each chunk's filter gradient
into one running sum per backward; the sums must equal the chunks' own gradients added up, on the
native loops (per-thread parts, one shared part, or both in one backward) and on the eager path,
and the engine's weight gradient over many chunks must equal the naive float64 formula's.
"""

import pytest
import torch
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine import contraction
from anyconv.variants import L1, MaxPlus, fused
from anyconv.variants.filter_sums import FilterGradientSum

#: two threads, for the per-thread parts of the sums
pytestmark = pytest.mark.usefixtures("two_threads")

BACKWARDS = {
    "l1": lambda f, w, g, **sum_: fused.l1_backward(f, w, g, **sum_),
    "max_plus": lambda f, w, g, **sum_: fused.tropical_backward(f, w, g, minimum=False, **sum_),
    "min_plus": lambda f, w, g, **sum_: fused.tropical_backward(f, w, g, minimum=True, **sum_),
    "lp-3": lambda f, w, g, **sum_: fused.power_sums_backward(f, w, g, 3.0, **sum_),
}

#: (groups, rows of each chunk, taps, filters): chunks split among threads by rows, one that the
#: tropical loops split by filters (fewer rows than filters) beside ones split by rows, and taps
#: enough for l1's and lp's backward to split the taps
CHUNKS = [
    pytest.param(1, (300, 157), 70, 64, id="rows-split"),
    pytest.param(2, (200, 900, 5), 37, 300, id="filters-then-rows"),
    pytest.param(2, (130, 61), 301, 9, id="taps-split"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("groups", "rows", "taps", "filters"), CHUNKS)
@pytest.mark.parametrize("kernel", list(BACKWARDS))
def test_a_running_sum_equals_the_chunks_gradients_added(kernel, groups, rows, taps, filters, dtype, path):
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(groups, filters, taps, generator=generator, dtype=dtype)
    backward = BACKWARDS[kernel]
    sums = FilterGradientSum(w)
    expected = torch.zeros_like(w)
    for count in rows:
        f = torch.randn(groups, count, taps, generator=generator, dtype=dtype)
        g = torch.randn(groups, count, filters, generator=generator, dtype=dtype)
        own_fields, own_filters = backward(f, w, g)
        expected += own_filters
        grad_fields, nothing = backward(f, w, g, filter_sum=sums)
        assert nothing is None
        assert torch.equal(grad_fields, own_fields)
        assert fused.last_path() == path
    total = sums.total()
    assert total.dtype == w.dtype and total.shape == w.shape and total.is_contiguous()
    # the same terms, summed in another order: a few roundings of the largest
    scale = expected.abs().max().item()
    torch.testing.assert_close(total, expected, rtol=0, atol=16 * torch.finfo(dtype).eps * scale)


def test_more_parts_later_keep_the_sums_so_far():
    sums = FilterGradientSum(torch.zeros(1, 2, 3))
    sums.loop_parts(1, (2, 3), torch.float32, outputs_innermost=False).add_(1)
    grown = sums.loop_parts(3, (2, 3), torch.float32, outputs_innermost=False)
    assert grown.shape == (3, 1, 2, 3)
    grown[2] += 2
    assert torch.equal(sums.total(), torch.full((1, 2, 3), 3.0))


def test_an_empty_sum_is_zero():
    filters = torch.ones(2, 3, 4, dtype=torch.float64)
    assert torch.equal(FilterGradientSum(filters).total(), torch.zeros_like(filters))


@pytest.mark.parametrize(
    ("variant", "options"),
    [("l1", {}), ("l1", {"adder_grad": True}), ("lp", {"p": 3.0}), ("max_plus", {}), ("min_plus", {})],
    ids=["l1", "l1-adder", "lp-3", "max_plus", "min_plus"],
)
def test_the_weight_gradient_over_many_chunks_is_the_formulas(variant, options, path, monkeypatch):
    handed = []
    original = contraction.FilterGradientSum

    def recorded(filters):
        handed.append(filters.shape)
        return original(filters)

    monkeypatch.setattr(contraction, "FilterGradientSum", recorded)
    chunks = []
    chunk_fields = contraction.chunk_fields
    monkeypatch.setattr(contraction, "chunk_fields", lambda *args: chunks.append(1) or chunk_fields(*args))
    generator = torch.Generator().manual_seed(1)
    # 32 channels per group: more than the tap loops take (tap_loops.MAX_DISTANCE_CHANNELS_PER_GROUP)
    x = torch.randn(2, 64, 20, 20, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 32, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 8, 20, 20, generator=generator, dtype=torch.float64)
    arguments = dict(padding=1, groups=2, **options)
    # a budget of a few rows: many chunks of the fields path
    output = anyconv.generalized_conv(x, w, variant, memory_budget=2**12, **arguments)
    chunks.clear()
    output.backward(grad)
    assert handed == [(2, 4, 288)] and len(chunks) >= 4
    got_x, got_w = x.grad, w.grad
    x.grad = w.grad = None
    naive_options = {} if variant == "l1" else options
    naive_generalized_conv(x, w, variant, padding=1, groups=2, **naive_options).backward(grad)
    if options.get("adder_grad"):
        # AdderNet's filter gradient is sum g (p - w), not the formula's: check it directly
        got_w_expected = _adder_filter_gradient(x.detach(), w.detach(), grad)
        torch.testing.assert_close(got_w, got_w_expected)
        return
    torch.testing.assert_close(got_w, w.grad)
    torch.testing.assert_close(got_x, x.grad)


def _adder_filter_gradient(x, w, grad):
    fields = torch.nn.functional.unfold(x, 3, padding=1)  # (B, C*9, L)
    taps = w.shape[1] * 9
    fields = fields.view(2, 2, taps, -1)  # (B, G, taps, L)
    g = grad.view(2, 2, 4, -1)  # (B, G, O/G, L)
    filters = w.view(2, 4, taps)
    # sum over samples and positions of g (p - w)
    products = torch.einsum("bgol,bgkl->gok", g, fields)
    return (products - filters * g.sum((0, 3)).unsqueeze(-1)).reshape(w.shape)


def test_a_subclass_taking_autograd_keeps_its_parents_reads():
    class SquaredMaxPlus(MaxPlus):
        name = "squared_max_plus_for_tests"
        contract_backward = None

        def contract(self, fields, filters):
            # the formula in torch's operations, which autograd differentiates
            return (fields[:, :, None, :] + filters[:, None]).amax(-1).square()

    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: anyconv.generalized_conv(x, w, SquaredMaxPlus), (x, w))


def test_a_subclass_whose_own_backward_takes_no_sum_is_told_so():
    message = "reads 'filter_sum' but its contract_backward\\(\\) has no parameter"
    with pytest.raises(TypeError, match=message):

        class MyL1(L1):
            def contract_backward(self, fields, filters, grad, adder_grad=False):
                return fused.l1_backward(fields, filters, grad)
