"""``lp`` on the tap loops (engine/tap_loops.py, variants/power_roots.py): the loops sum
-|p - w|^p tap by tap and the root is taken after them; for a whole p from 1 to 4 by products,
for any other p > 0 by exp and log (on the layers whose every tap the loops sum).

Every geometry of the tap loops' cases, against the naive float64 formula (forward and
gradients), gradcheck, the fields path on hostile values (NaN, inf, a field equal to its filter),
float32 against float64, and the layers the loops leave to the fields path.
"""

from __future__ import annotations

import pytest
import torch
from reference import case_tensors
from test_engine_paths_tap_loops import CASES, IDS, _fields_path
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine.plan import plan_conv
from anyconv.engine.tap_loops import tap_loops_fit
from anyconv.variants import Lp, resolve_variant

#: the whole exponents whose sums the loops take by products (1 and 2: l1's and l2's loops), and
#: others, by exp and log: under 1, between 1 and 2, a half, and a whole one past 4
POWERS = [1.0, 2.0, 3.0, 4.0, 0.5, 1.5, 2.5, 5.0]
#: a dense first layer: the loops' filter blocks take its forward, the fields path its backward
DENSE = {
    "id": "dense-first-layer",
    "x": (1, 3, 33, 34),
    "w": (8, 3, 3, 3),
    "with": {"padding": 1, "groups": 1},
}
LP_CASES = [*CASES, DENSE]
LP_IDS = [*IDS, DENSE["id"]]

pytestmark = [
    pytest.mark.skipif(
        not tap_loops_fit(Lp(p=3.0), torch.ones(1, 2, 3), torch.ones(2, 1, 3), 2),
        reason="the tap loops are not compiled here (no C++ compiler, or ANYCONV_NATIVE=0)",
    ),
    pytest.mark.usefixtures("two_threads"),
]


def _plan_path(x, w, p, case):
    return plan_conv(x, w, resolve_variant("lp", p=p), 1, 0, 1, case["with"]["groups"], "zeros", None).path


@pytest.mark.parametrize("p", POWERS, ids=str)
@pytest.mark.parametrize("case", LP_CASES, ids=LP_IDS)
def test_lp_equals_the_naive_formula_forward_and_gradients(case, p):
    x, w, b = case_tensors(case)
    assert _plan_path(x, w, p, case) == "tap loops"
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    naive_inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    output = anyconv.generalized_conv(*inputs[:2], "lp", inputs[2], p=p, **case["with"])
    expected = naive_generalized_conv(*naive_inputs[:2], "lp", naive_inputs[2], p=p, **case["with"])
    torch.testing.assert_close(output, expected)
    grad = torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(output, inputs, grad)
    for value, reference in zip(got, torch.autograd.grad(expected, naive_inputs, grad)):
        torch.testing.assert_close(value, reference)


@pytest.mark.parametrize("p", [3.0, 4.0, 0.5, 2.5], ids=str)
@pytest.mark.parametrize(
    "case", [case for case in LP_CASES if case["id"] in ("2d-multiplier-2", "1d-stride3", "3d-stride2")]
)
def test_gradcheck(case, p):
    x, w, b = (tensor.requires_grad_() for tensor in case_tensors(case))
    assert torch.autograd.gradcheck(
        lambda x, w, b: anyconv.generalized_conv(x, w, "lp", b, p=p, **case["with"]), (x, w, b)
    )


@pytest.mark.parametrize("p", POWERS, ids=str)
def test_a_channels_last_depthwise_input_gives_the_formula_and_its_layout(p):
    case = {"x": (2, 8, 9, 11), "w": (8, 1, 3, 3), "with": {"padding": 1, "groups": 8}}
    x, w, b = case_tensors(case)
    last = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    output = anyconv.generalized_conv(last, w, "lp", b, p=p, **case["with"])
    assert output.is_contiguous(memory_format=torch.channels_last)
    naive_x = x.clone().requires_grad_()
    expected = naive_generalized_conv(naive_x, w, "lp", b, p=p, **case["with"])
    torch.testing.assert_close(output, expected)
    grad = torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(2))
    (got,) = torch.autograd.grad(output, last, grad)
    (wanted,) = torch.autograd.grad(expected, naive_x, grad)
    torch.testing.assert_close(got, wanted)


@pytest.mark.parametrize("p", POWERS, ids=str)
def test_float32_matches_float64(p):
    case = CASES[0]
    x, w, b = case_tensors(case)
    expected = anyconv.generalized_conv(x, w, "lp", b, p=p, **case["with"])
    got = anyconv.generalized_conv(x.float(), w.float(), "lp", b.float(), p=p, **case["with"])
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)


def _hostile(case):
    """The case's tensors with a NaN and an inf in the input, and one field equal to its filter
    (sum 0, whose root has an infinite slope)."""
    x, w, b = case_tensors(case)
    x[0, 0, 0, 0], x[-1, -1, -1, -1] = float("nan"), float("inf")
    # the field of output (0, 1, 4, 4) without padding: the input window under filter 1
    w[1, 0] = x[0, 1, 3:6, 3:6]
    return x, w, b


@pytest.mark.parametrize("p", POWERS, ids=str)
def test_hostile_values_follow_the_fields_path(p, monkeypatch):
    case = {"x": (2, 4, 9, 9), "w": (4, 1, 3, 3), "with": {"padding": 1, "groups": 4}}

    def run():
        inputs = [tensor.clone().requires_grad_() for tensor in _hostile(case)]
        output = anyconv.generalized_conv(*inputs[:2], "lp", inputs[2], p=p, **case["with"])
        grad = torch.linspace(-1, 1, output.numel(), dtype=output.dtype).view(output.shape)
        return (output.detach(), *torch.autograd.grad(output, inputs, grad))

    x, w, _ = _hostile(case)
    assert _plan_path(x, w, p, case) == "tap loops"
    for got, expected in zip(run(), _fields_path(monkeypatch, run)):
        torch.testing.assert_close(got, expected, equal_nan=True)


@pytest.mark.parametrize("p", [2.5, 0.7, 5.0], ids=str)
def test_other_exponents_on_a_dense_layer_stay_on_the_fields_path(p):
    # the filter blocks take a whole p from 1 to 4 there; an exp and a log per term measured
    # faster in the fields path's fused loops
    case = {"x": (1, 16, 12, 12), "w": (8, 16, 3, 3), "with": {"padding": 1, "groups": 1}}
    x, w, b = case_tensors(case)
    assert _plan_path(x, w, 3.0, case) == "tap loops"
    assert _plan_path(x, w, p, case) == "fields"
    output = anyconv.generalized_conv(x, w, "lp", b, p=p, **case["with"])
    torch.testing.assert_close(output, naive_generalized_conv(x, w, "lp", b, p=p, **case["with"]))


def test_concurrent_calls_with_different_exponents():
    # the loops' run-time exponent is one per library: calls from two threads take turns
    import threading

    case = {"x": (2, 8, 16, 16), "w": (8, 1, 3, 3), "with": {"padding": 1, "groups": 8}}
    x, w, _ = case_tensors(case)
    expected = {p: naive_generalized_conv(x, w, "lp", p=p, **case["with"]) for p in (0.5, 2.5)}
    failures = []

    def run(p):
        for _ in range(20):
            got = anyconv.generalized_conv(x, w, "lp", p=p, **case["with"])
            if not torch.allclose(got, expected[p]):
                failures.append(p)

    threads = [threading.Thread(target=run, args=(p,)) for p in (0.5, 2.5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
