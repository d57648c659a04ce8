"""anyconv.nn.GeneralizedConv1d/2d/3d/Nd: torch's parameters and state_dict, the variant in the repr,
tensor options as parameters, the dot variant equal to torch's conv, pickle round trips."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

import anyconv.nn as acnn
from anyconv.variants import Variant

DOUBLE = torch.float64


class ScaledDot(Variant):
    """A dot product scaled per output channel: a variant with a per-channel tensor option."""

    name = "scaled_dot"
    defaults = {"scale": 1.0}
    per_channel = ("scale",)

    def contract(self, fields, filters, scale):
        return torch.matmul(fields, filters.transpose(-1, -2)) * scale


LAYERS = [
    dict(
        id="1d",
        ours=acnn.GeneralizedConv1d,
        theirs=torch.nn.Conv1d,
        args=(2, 4, 3),
        kwargs=dict(padding=1),
        input=(2, 2, 9),
    ),
    dict(
        id="2d",
        ours=acnn.GeneralizedConv2d,
        theirs=torch.nn.Conv2d,
        args=(4, 6, 3),
        kwargs=dict(stride=2, groups=2, padding_mode="reflect", padding=1),
        input=(2, 4, 8, 8),
    ),
    dict(
        id="3d",
        ours=acnn.GeneralizedConv3d,
        theirs=torch.nn.Conv3d,
        args=(2, 2, 2),
        kwargs=dict(bias=False),
        input=(1, 2, 4, 4, 4),
    ),
]


@pytest.mark.parametrize("case", LAYERS, ids=[case["id"] for case in LAYERS])
def test_dot_variant_layer_is_torch_conv(case):
    torch.manual_seed(0)
    theirs = case["theirs"](*case["args"], **case["kwargs"], dtype=DOUBLE)
    torch.manual_seed(0)
    ours = case["ours"](*case["args"], **case["kwargs"], variant="dot", dtype=DOUBLE)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for mine, reference in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(mine, reference)
    x = torch.randn(case["input"], dtype=DOUBLE, requires_grad=True)
    out, expected = ours(x), theirs(x)
    torch.testing.assert_close(out, expected)
    mine = torch.autograd.grad(out.sum(), [x, *ours.parameters()])
    reference = torch.autograd.grad(expected.sum(), [x, *theirs.parameters()])
    for a, b in zip(mine, reference):
        torch.testing.assert_close(a, b)
    assert ours.extra_repr() == f"{theirs.extra_repr()}, variant=Dot()"


def test_state_dict_loads_both_ways_with_torch():
    theirs = torch.nn.Conv2d(3, 4, 3, padding=1)
    ours = acnn.GeneralizedConv2d(3, 4, 3, padding=1, variant="dot")
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    assert torch.equal(ours.weight, theirs.weight)


def test_tensor_options_are_parameters_and_learn():
    torch.manual_seed(0)
    scale = torch.linspace(0.5, 2.0, 4, dtype=DOUBLE)
    layer = acnn.GeneralizedConv2d(2, 4, 3, variant=ScaledDot, scale=scale, dtype=DOUBLE)
    assert sorted(name for name, _ in layer.named_parameters()) == ["bias", "variant_options.scale", "weight"]
    assert "variant_options.scale" in layer.state_dict()
    x = torch.randn(2, 2, 6, 6, dtype=DOUBLE)
    plain = torch.nn.functional.conv2d(x, layer.weight)
    expected = plain * scale.reshape(1, -1, 1, 1) + layer.bias.reshape(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected)
    layer(x).sum().backward()
    torch.testing.assert_close(layer.variant_options.scale.grad, plain.sum(dim=(0, 2, 3)))


def _rbf(gamma):
    torch.manual_seed(0)
    return acnn.GeneralizedConv2d(3, 4, 3, variant="rbf", gamma=torch.full((4,), gamma))


def test_tensor_options_are_read_from_the_module_at_each_call():
    """The variant computes with the option Parameters the module holds when it is called, not
    those it was made with: load_state_dict(assign=True), a conversion that makes new Parameters,
    and torch.func.functional_call all replace them."""
    x = torch.randn(2, 3, 6, 6)
    source, expected = _rbf(0.3), _rbf(0.3)(x)
    loaded = _rbf(0.9)
    loaded.load_state_dict(source.state_dict(), assign=True)
    torch.testing.assert_close(loaded(x), expected)
    # built on the meta device (no values to check yet), then loaded
    with torch.device("meta"):
        empty = acnn.GeneralizedConv2d(3, 4, 3, variant="rbf", gamma=torch.full((4,), 0.9))
    empty.load_state_dict(source.state_dict(), assign=True)
    torch.testing.assert_close(empty(x), expected)
    # functional_call: the given option is used, and its gradient is the module's
    parameters = {name: value.detach() for name, value in _rbf(0.9).named_parameters()}
    parameters["variant_options.gamma"] = torch.full((4,), 0.3)
    torch.testing.assert_close(torch.func.functional_call(source, parameters, (x,)), expected)
    gradient = torch.func.grad(lambda given: torch.func.functional_call(source, given, (x,)).sum())(
        parameters
    )
    source(x).sum().backward()
    torch.testing.assert_close(gradient["variant_options.gamma"], source.variant_options.gamma.grad)


def test_a_conversion_that_makes_new_parameters_reaches_the_variant():
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        layer = _rbf(0.3).double()
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(previous)
    # the module's new Parameter is the one the variant reads
    with torch.no_grad():
        layer.variant_options.gamma.fill_(0.9)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _rbf(0.9).double()(x))


def test_float_options_and_repr():
    layer = acnn.GeneralizedConvNd(2, 3, (2, 2, 2, 2), variant=ScaledDot, scale=3.0, padding=1)
    assert "variant=ScaledDot(scale=3.0)" in repr(layer)
    assert layer(torch.randn(1, 2, 3, 3, 3, 3)).shape == (1, 3, 4, 4, 4, 4)


def test_pickle_and_torch_save_round_trip():
    layer = acnn.GeneralizedConv2d(2, 4, 3, variant="dot", memory_budget=512, dtype=DOUBLE)
    x = torch.randn(2, 2, 7, 7, dtype=DOUBLE)
    expected = layer(x)
    copy = pickle.loads(pickle.dumps(layer))
    assert copy.memory_budget == 512
    torch.testing.assert_close(copy(x), expected, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), expected, rtol=0, atol=0)


def test_unknown_variant_and_option_are_clear_errors():
    with pytest.raises(ValueError, match=r"variant='nope' is invalid"):
        acnn.GeneralizedConv2d(2, 4, 3, variant="nope")
    with pytest.raises(ValueError, match=r"gamma=2 is not an option of variant 'dot'"):
        acnn.GeneralizedConv2d(2, 4, 3, variant="dot", gamma=2)
    with pytest.raises(TypeError, match=r"variant"):
        acnn.GeneralizedConv2d(2, 4, 3)
