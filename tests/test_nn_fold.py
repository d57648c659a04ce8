"""anyconv.nn.Unfold and Fold: drop-ins for torch.nn.Unfold and Fold, for any N, checked at construction."""

import pickle

import pytest
import torch
import torch.nn.functional as F

import anyconv
from anyconv import ArgumentError, ArgumentTypeError

TORCH_CASES = [
    pytest.param({"kernel_size": 3}, id="kernel"),
    pytest.param({"kernel_size": (2, 3), "dilation": (2, 1), "padding": 1, "stride": (1, 2)}, id="tuples"),
    pytest.param({"kernel_size": 2, "dilation": 1, "padding": (0, 1), "stride": 2}, id="strided"),
]


@pytest.mark.parametrize("arguments", TORCH_CASES)
def test_unfold_module_equals_torch_module(arguments):
    input = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    ours, theirs = anyconv.nn.Unfold(**arguments), torch.nn.Unfold(**arguments)
    assert repr(ours) == repr(theirs)
    assert torch.equal(ours(input), theirs(input))


@pytest.mark.parametrize("arguments", TORCH_CASES)
def test_fold_module_equals_torch_module(arguments):
    unfolded = torch.nn.Unfold(**arguments)(torch.randn(2, 3, 7, 8, dtype=torch.float64))
    ours, theirs = anyconv.nn.Fold((7, 8), **arguments), torch.nn.Fold((7, 8), **arguments)
    assert repr(ours) == repr(theirs)
    assert torch.allclose(ours(unfolded), theirs(unfolded))


def test_modules_work_in_any_number_of_dimensions():
    input = torch.randn(1, 2, 4, 3, 5, 4, dtype=torch.float64)
    unfold = anyconv.nn.Unfold((2, 2, 3, 1), padding=((1, 0), 0, 1, 2), stride=2)
    fold = anyconv.nn.Fold((4, 3, 5, 4), (2, 2, 3, 1), padding=((1, 0), 0, 1, 2), stride=2)
    columns = unfold(input)
    assert torch.equal(columns, anyconv.unfold(input, (2, 2, 3, 1), padding=((1, 0), 0, 1, 2), stride=2))
    overlap = fold(unfold(torch.ones_like(input)))
    assert torch.allclose(fold(columns), input * overlap)


def test_unfold_padding_mode_is_applied_and_shown():
    input = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    layer = anyconv.nn.Unfold(3, padding=1, padding_mode="reflect")
    assert repr(layer) == "Unfold(kernel_size=3, dilation=1, padding=1, stride=1, padding_mode='reflect')"
    assert torch.equal(layer(input), F.unfold(F.pad(input, (1, 1, 1, 1), mode="reflect"), 3))


def test_modules_have_no_state_and_pickle():
    layers = [anyconv.nn.Unfold(2, padding_mode="circular", padding=1), anyconv.nn.Fold((4, 4), 2)]
    for layer in layers:
        assert layer.state_dict() == {}
        copy = pickle.loads(pickle.dumps(layer))
        assert repr(copy) == repr(layer)


def test_gradients_flow_through_a_sequential_model():
    model = torch.nn.Sequential(anyconv.nn.Unfold(2, stride=2), anyconv.nn.Fold((6, 6), 2, stride=2))
    input = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.equal(model(input), input)
    model(input).sum().backward()
    assert torch.equal(input.grad, torch.ones_like(input))


CONSTRUCTION_ERRORS = [
    pytest.param(anyconv.nn.Unfold, (0,), {}, ArgumentError, "kernel_size=0", id="unfold-kernel"),
    pytest.param(anyconv.nn.Unfold, (3,), {"stride": -1}, ArgumentError, "stride=-1", id="unfold-stride"),
    pytest.param(
        anyconv.nn.Unfold,
        (3,),
        {"padding": "same", "stride": 2},
        ArgumentError,
        "strided",
        id="unfold-same-strided",
    ),
    pytest.param(
        anyconv.nn.Unfold, ((3, 3),), {"dilation": (1, 1, 1)}, ArgumentError, "dilation=", id="unfold-lengths"
    ),
    pytest.param(
        anyconv.nn.Unfold,
        (3,),
        {"padding_mode": "wrap"},
        ArgumentError,
        "padding_mode='wrap'",
        id="unfold-mode",
    ),
    pytest.param(anyconv.nn.Unfold, (3.0,), {}, ArgumentTypeError, "kernel_size=3.0", id="unfold-type"),
    pytest.param(anyconv.nn.Fold, ((4, 4), 5), {}, ArgumentError, "kernel_size=", id="fold-kernel-too-large"),
    pytest.param(
        anyconv.nn.Fold, ((4, 4), 2), {"padding": -1}, ArgumentError, "padding=-1", id="fold-padding"
    ),
    pytest.param(anyconv.nn.Fold, ("4", 2), {}, ArgumentTypeError, "output_size='4'", id="fold-size-type"),
]


@pytest.mark.parametrize(("module", "positional", "options", "error", "message"), CONSTRUCTION_ERRORS)
def test_bad_arguments_raise_at_construction(module, positional, options, error, message):
    with pytest.raises(error, match=message):
        module(*positional, **options)
