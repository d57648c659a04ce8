"""anyconv.nn.Conv1d/2d/3d/Nd as drop-ins for torch.nn.ConvNd: constructor, parameters, state_dict
both ways, init, repr, forward and gradients, unbatched input, error wording, pickle and torch.save."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from reference_conv import naive_conv

import anyconv.nn as acnn

DOUBLE = torch.float64

MODULES = [
    dict(id="1d", ours=acnn.Conv1d, theirs=torch.nn.Conv1d, args=(3, 6, 3), kwargs={}, input=(2, 3, 11)),
    dict(
        id="1d-same-reflect",
        ours=acnn.Conv1d,
        theirs=torch.nn.Conv1d,
        args=(2, 4, 4),
        kwargs=dict(padding="same", padding_mode="reflect", dilation=2),
        input=(3, 2, 12),
    ),
    dict(
        id="2d",
        ours=acnn.Conv2d,
        theirs=torch.nn.Conv2d,
        args=(3, 8, 3),
        kwargs=dict(stride=2, padding=1),
        input=(2, 3, 9, 9),
    ),
    dict(
        id="2d-groups-no-bias",
        ours=acnn.Conv2d,
        theirs=torch.nn.Conv2d,
        args=(4, 6, (3, 2)),
        kwargs=dict(groups=2, bias=False, padding=(1, 0)),
        input=(2, 4, 7, 6),
    ),
    dict(
        id="2d-depthwise-circular",
        ours=acnn.Conv2d,
        theirs=torch.nn.Conv2d,
        args=(4, 8, 3),
        kwargs=dict(groups=4, padding=2, padding_mode="circular"),
        input=(2, 4, 6, 6),
    ),
    dict(
        id="2d-replicate-unbatched",
        ours=acnn.Conv2d,
        theirs=torch.nn.Conv2d,
        args=(3, 5, 3),
        kwargs=dict(padding=1, padding_mode="replicate"),
        input=(3, 8, 7),
    ),
    dict(
        id="2d-valid",
        ours=acnn.Conv2d,
        theirs=torch.nn.Conv2d,
        args=(2, 3, 2),
        kwargs=dict(padding="valid", dilation=(1, 2)),
        input=(1, 2, 6, 6),
    ),
    dict(
        id="3d",
        ours=acnn.Conv3d,
        theirs=torch.nn.Conv3d,
        args=(2, 4, 3),
        kwargs=dict(padding=1, stride=(1, 2, 1)),
        input=(2, 2, 5, 6, 5),
    ),
    dict(
        id="3d-reflect-same",
        ours=acnn.Conv3d,
        theirs=torch.nn.Conv3d,
        args=(2, 2, 3),
        kwargs=dict(padding="same", padding_mode="reflect"),
        input=(1, 2, 4, 5, 4),
    ),
]
IDS = [case["id"] for case in MODULES]


def _pair(case, dtype=DOUBLE):
    torch.manual_seed(0)
    theirs = case["theirs"](*case["args"], **case["kwargs"], dtype=dtype)
    ours = case["ours"](*case["args"], **case["kwargs"], dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("case", MODULES, ids=IDS)
def test_forward_and_gradients_equal_torch(case):
    ours, theirs = _pair(case)
    x = torch.randn(case["input"], dtype=DOUBLE, requires_grad=True)
    out, expected = ours(x), theirs(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    mine = torch.autograd.grad(out, [x, *ours.parameters()], grad)
    reference = torch.autograd.grad(expected, [x, *theirs.parameters()], grad)
    for a, b in zip(mine, reference):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", MODULES, ids=IDS)
def test_same_parameters_init_repr_and_state_dict_both_ways(case):
    torch.manual_seed(1)
    theirs = case["theirs"](*case["args"], **case["kwargs"])
    torch.manual_seed(1)
    ours = case["ours"](*case["args"], **case["kwargs"])
    # same initialisation from the same seed: torch's reset_parameters runs unchanged
    for (name, mine), (their_name, reference) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name == their_name
        assert torch.equal(mine, reference)
    assert repr(ours) == repr(theirs)
    assert ours.extra_repr() == theirs.extra_repr()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    state = {key: torch.randn_like(value) for key, value in ours.state_dict().items()}
    theirs.load_state_dict(state)
    ours.load_state_dict(theirs.state_dict())
    assert all(torch.equal(ours.state_dict()[key], value) for key, value in state.items())
    assert isinstance(ours, case["theirs"])


@pytest.mark.parametrize("case", MODULES, ids=IDS)
def test_pickle_and_torch_save_round_trip(case):
    ours, _ = _pair(case)
    x = torch.randn(case["input"], dtype=DOUBLE)
    expected = ours(x)
    copy = pickle.loads(pickle.dumps(ours))
    assert type(copy) is type(ours)
    torch.testing.assert_close(copy(x), expected, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    fresh = case["ours"](*case["args"], **case["kwargs"], dtype=DOUBLE)
    fresh.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


def test_memory_budget_attribute_changes_chunks_not_results():
    torch.manual_seed(0)
    layer = acnn.Conv2d(3, 4, 3, padding=1, dtype=DOUBLE)
    x = torch.randn(3, 3, 10, 10, dtype=DOUBLE)
    expected = layer(x)
    layer.memory_budget = 256
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


CONSTRUCTOR_ERRORS = [
    dict(
        id="groups-in", args=(3, 4, 3), kwargs=dict(groups=2), match="in_channels must be divisible by groups"
    ),
    dict(
        id="groups-out",
        args=(4, 3, 3),
        kwargs=dict(groups=2),
        match="out_channels must be divisible by groups",
    ),
    dict(
        id="same-strided",
        args=(3, 4, 3),
        kwargs=dict(padding="same", stride=2),
        match="padding='same' is not supported for strided convolutions",
    ),
    dict(
        id="padding-mode",
        args=(3, 4, 3),
        kwargs=dict(padding_mode="mirror"),
        match="padding_mode must be one of",
    ),
    dict(id="padding-string", args=(3, 4, 3), kwargs=dict(padding="full"), match="Invalid padding string"),
]


@pytest.mark.parametrize("case", CONSTRUCTOR_ERRORS, ids=[case["id"] for case in CONSTRUCTOR_ERRORS])
def test_constructor_errors_have_torch_wording(case):
    with pytest.raises(ValueError, match=case["match"]) as ours:
        acnn.Conv2d(*case["args"], **case["kwargs"])
    with pytest.raises(ValueError) as theirs:
        torch.nn.Conv2d(*case["args"], **case["kwargs"])
    assert str(ours.value) == str(theirs.value)


def test_forward_with_wrong_channels_names_the_shapes():
    layer = acnn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"input of shape \(1, 5, 8, 8\) has 5 channels"):
        layer(torch.randn(1, 5, 8, 8))
    with pytest.raises(ValueError, match=r"expected 4-D .* or 3-D unbatched input"):
        layer(torch.randn(8, 8))


FOUR_D = [
    dict(id="4d", args=(2, 3, (3, 2, 2, 3)), kwargs=dict(padding=1), input=(2, 2, 4, 3, 4, 4)),
    dict(
        id="4d-groups-stride-reflect",
        args=(4, 2, (2, 2, 2, 2)),
        kwargs=dict(groups=2, stride=(2, 1, 1, 2), padding=1, padding_mode="reflect"),
        input=(1, 4, 4, 3, 3, 5),
    ),
]


@pytest.mark.parametrize("case", FOUR_D, ids=[case["id"] for case in FOUR_D])
def test_convnd_beyond_3d_matches_naive_loop(case):
    layer = acnn.ConvNd(*case["args"], **case["kwargs"], dtype=DOUBLE)
    x = torch.randn(case["input"], dtype=DOUBLE)
    kwargs = dict(case["kwargs"])
    expected = naive_conv(x, layer.weight, layer.bias, **kwargs)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x[0]), expected[0])


def test_convnd_in_2d_is_conv2d():
    torch.manual_seed(0)
    theirs = torch.nn.Conv2d(3, 4, (3, 3), stride=2, padding=1, dtype=DOUBLE)
    ours = acnn.ConvNd(3, 4, (3, 3), stride=2, padding=1, dtype=DOUBLE)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    assert ours.extra_repr() == theirs.extra_repr()
    x = torch.randn(2, 3, 9, 9, dtype=DOUBLE)
    torch.testing.assert_close(ours(x), theirs(x))
    copy = pickle.loads(pickle.dumps(ours))
    torch.testing.assert_close(copy(x), theirs(x))


def test_convnd_needs_a_kernel_tuple():
    with pytest.raises(TypeError, match=r"kernel_size=3 has type int: expected a tuple of N ints"):
        acnn.ConvNd(2, 3, 3)
    with pytest.raises(ValueError, match=r"stride=\(1, 2\) is invalid"):
        acnn.ConvNd(2, 3, (3, 3, 3), stride=(1, 2))


TRANSPOSED = [
    dict(
        id="1d",
        ours=acnn.ConvTranspose1d,
        theirs=torch.nn.ConvTranspose1d,
        args=(3, 2, 3),
        kwargs=dict(stride=2),
        input=(2, 3, 6),
        output_size=None,
    ),
    dict(
        id="2d-output-size",
        ours=acnn.ConvTranspose2d,
        theirs=torch.nn.ConvTranspose2d,
        args=(4, 6, 3),
        kwargs=dict(stride=2, padding=1, groups=2),
        input=(2, 4, 5, 5),
        output_size=(10, 10),
    ),
    dict(
        id="2d-unbatched",
        ours=acnn.ConvTranspose2d,
        theirs=torch.nn.ConvTranspose2d,
        args=(2, 3, (2, 3)),
        kwargs=dict(dilation=2, output_padding=1, bias=False),
        input=(2, 4, 4),
        output_size=None,
    ),
    dict(
        id="3d",
        ours=acnn.ConvTranspose3d,
        theirs=torch.nn.ConvTranspose3d,
        args=(2, 2, 2),
        kwargs=dict(stride=(2, 1, 2)),
        input=(1, 2, 3, 3, 3),
        output_size=None,
    ),
]
TRANSPOSED_IDS = [case["id"] for case in TRANSPOSED]


@pytest.mark.parametrize("case", TRANSPOSED, ids=TRANSPOSED_IDS)
def test_transposed_modules_equal_torch(case):
    torch.manual_seed(0)
    theirs = case["theirs"](*case["args"], **case["kwargs"], dtype=DOUBLE)
    torch.manual_seed(0)
    ours = case["ours"](*case["args"], **case["kwargs"], dtype=DOUBLE)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
    x = torch.randn(case["input"], dtype=DOUBLE, requires_grad=True)
    out, expected = ours(x, case["output_size"]), theirs(x, case["output_size"])
    torch.testing.assert_close(out, expected)
    mine = torch.autograd.grad(out.sum(), [x, *ours.parameters()])
    for a, b in zip(mine, torch.autograd.grad(expected.sum(), [x, *theirs.parameters()])):
        torch.testing.assert_close(a, b)
    copy = pickle.loads(pickle.dumps(ours))
    torch.testing.assert_close(copy(x, case["output_size"]), expected)
