"""The pointwise path (engine/pointwise.py): 1x1 convolutions as one matrix product over channels.

Every geometry it accepts, against torch's F.convNd, the naive float64 formulas and the fields path
(the same call with the path turned off), forward and gradients.
"""

from __future__ import annotations

import pytest
import torch
from torch_reference import torch_conv
from variant_reference import naive_generalized_conv

import anyconv
from anyconv.engine import paths, pointwise, pointwise_cosine
from anyconv.engine.plan import clear_plans, plan_conv
from anyconv.variants import resolve_variant

CASES = [
    {"id": "2d", "x": (2, 6, 5, 4), "w": (3, 6, 1, 1), "with": {}},
    {"id": "2d-stride2", "x": (2, 4, 7, 6), "w": (5, 4, 1, 1), "with": {"stride": 2}},
    {"id": "2d-stride-per-dim", "x": (1, 4, 7, 6), "w": (2, 4, 1, 1), "with": {"stride": (3, 1)}},
    {"id": "2d-groups", "x": (2, 6, 4, 4), "w": (4, 3, 1, 1), "with": {"groups": 2}},
    {"id": "2d-dilation-ignored", "x": (1, 3, 4, 5), "w": (2, 3, 1, 1), "with": {"dilation": 3}},
    {
        "id": "2d-reflect-padded-first",
        "x": (1, 3, 4, 5),
        "w": (2, 3, 1, 1),
        "with": {"padding": 1, "padding_mode": "reflect"},
    },
    {"id": "1x1-image-squeeze-excitation", "x": (4, 8, 1, 1), "w": (2, 8, 1, 1), "with": {}},
    {"id": "1d", "x": (2, 5, 9), "w": (3, 5, 1), "with": {"stride": 2}},
    {"id": "3d", "x": (1, 4, 3, 4, 5), "w": (6, 2, 1, 1, 1), "with": {"groups": 2, "stride": (1, 2, 2)}},
]
IDS = [case["id"] for case in CASES]
VARIANTS = ["dot", "cosine"]


def _tensors(case, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(case["x"], generator=generator, dtype=torch.float64)
    w = torch.randn(case["w"], generator=generator, dtype=torch.float64)
    b = torch.randn(case["w"][0], generator=generator, dtype=torch.float64)
    return x, w, b


def _fields_path(monkeypatch, function):
    with monkeypatch.context() as patch:
        patch.setattr(paths, "pointwise_fits", lambda *arguments: False)
        clear_plans()  # the plans made before the patch chose the fast path
        try:
            return function()
        finally:
            clear_plans()


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize(
    "case", [case for case in CASES if "padding" not in case["with"]], ids=lambda case: case["id"]
)
def test_the_path_is_taken(case, name):
    x, w, _ = _tensors(case)
    stride, groups = case["with"].get("stride", 1), case["with"].get("groups", 1)
    assert plan_conv(x, w, resolve_variant(name), stride, 0, 1, groups, "zeros", None).path == "pointwise"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_dot_equals_torch(case):
    x, w, b = _tensors(case)
    torch.testing.assert_close(anyconv.conv(x, w, b, **case["with"]), torch_conv(x, w, b, **case["with"]))


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_gradients_equal_the_naive_formula(case, name):
    x, w, b = _tensors(case)
    inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    naive_inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    output = anyconv.generalized_conv(*inputs[:2], name, inputs[2], **case["with"])
    expected = naive_generalized_conv(*naive_inputs[:2], name, naive_inputs[2], **case["with"])
    torch.testing.assert_close(output, expected)
    grad = torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(1))
    for got, reference in zip(
        torch.autograd.grad(output, inputs, grad), torch.autograd.grad(expected, naive_inputs, grad)
    ):
        torch.testing.assert_close(got, reference)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck(case, name):
    x, w, b = (tensor.requires_grad_() for tensor in _tensors(case))
    assert torch.autograd.gradcheck(
        lambda x, w, b: anyconv.generalized_conv(x, w, name, b, **case["with"]), (x, w, b)
    )


@pytest.mark.parametrize(
    ("small_fields", "composed"),
    [(pointwise_cosine.SMALL_FIELDS, True), (0, True), (0, False)],
    ids=["composed-vector-norm", "composed-sum-of-squares", "recomputing-backward"],
)
def test_a_zero_field_has_the_gradient_of_the_fields_path(monkeypatch, small_fields, composed):
    monkeypatch.setattr(pointwise_cosine, "SMALL_FIELDS", small_fields)
    # the composed form is what a watched call (torch.compile, export, func) differentiates
    monkeypatch.setattr(pointwise, "machinery_watches", lambda *tensors: composed)
    monkeypatch.setattr(pointwise_cosine, "RECOMPUTE_OUTPUTS", 0)
    x, w, _ = _tensors(CASES[0])
    x[:, :, 1, 2] = 0

    def gradients():
        inputs = [tensor.clone().requires_grad_() for tensor in (x, w)]
        output = anyconv.generalized_conv(*inputs, "cosine")
        return torch.autograd.grad(output.sum(), inputs)

    for got, expected in zip(gradients(), _fields_path(monkeypatch, gradients)):
        torch.testing.assert_close(got, expected)


def test_unbatched_input():
    x, w, b = _tensors(CASES[1])
    torch.testing.assert_close(anyconv.conv(x[0], w, b, stride=2), torch_conv(x[:1], w, b, stride=2)[0])


def test_padded_and_other_variants_take_other_paths():
    x, w = torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1, 1)
    assert plan_conv(x, w, resolve_variant("dot"), 1, 1, 1, 1, "zeros", None).path == "fields"
    assert plan_conv(x, w, resolve_variant("l2"), 1, 0, 1, 1, "zeros", None).path == "fields"


CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}
LAST_CASES = [case for case in CASES if len(case["x"]) in CHANNELS_LAST and "padding" not in case["with"]] + [
    {"id": "3d-one-group", "x": (2, 4, 3, 4, 5), "w": (3, 4, 1, 1, 1), "with": {"stride": (1, 2, 2)}}
]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("case", LAST_CASES, ids=[case["id"] for case in LAST_CASES])
def test_channels_last_input_equals_the_naive_formula_and_keeps_its_layout(case, name):
    """A channels-last input's positions are the product's rows: no transposing copy, and the
    output channels-last (torch's layout in 2-D; test_memory_format has the rule)."""
    x, w, b = _tensors(case)
    layout = CHANNELS_LAST[x.dim()]
    inputs = [
        x.contiguous(memory_format=layout).requires_grad_(),
        w.clone().requires_grad_(),
        b.clone().requires_grad_(),
    ]
    naive_inputs = [tensor.clone().requires_grad_() for tensor in (x, w, b)]
    output = anyconv.generalized_conv(*inputs[:2], name, inputs[2], **case["with"])
    expected = naive_generalized_conv(*naive_inputs[:2], name, naive_inputs[2], **case["with"])
    torch.testing.assert_close(output, expected)
    ambiguous = inputs[0].is_contiguous()  # one position: both layouts at once, torch keeps channels first
    assert output.is_contiguous(memory_format=torch.contiguous_format if ambiguous else layout)
    if x.dim() == 4 and name == "dot":
        assert output.stride() == torch_conv(*inputs, **case["with"]).stride()
    grad = torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(1))
    for got, reference in zip(
        torch.autograd.grad(output, inputs, grad), torch.autograd.grad(expected, naive_inputs, grad)
    ):
        torch.testing.assert_close(got, reference)
    assert torch.autograd.gradcheck(
        lambda x, w, b: anyconv.generalized_conv(x, w, name, b, **case["with"]),
        [t.detach().requires_grad_() for t in inputs],
    )
