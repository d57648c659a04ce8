"""The anyconv.nn modules show their real constructor: torch's ConvNd signature, plus
``variant``, ``memory_budget`` and the variant's options for the generalized modules."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.nn.modules.conv import _ConvNd

import anyconv.nn as acnn

KEYWORD = inspect.Parameter.KEYWORD_ONLY
VARIANT_PARAMETERS = [
    ("variant", KEYWORD, inspect.Parameter.empty),
    ("memory_budget", KEYWORD, None),
    ("variant_options", inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty),
]

CASES = [
    dict(id="Conv1d", ours=acnn.Conv1d, theirs=torch.nn.Conv1d, extra=[]),
    dict(id="Conv2d", ours=acnn.Conv2d, theirs=torch.nn.Conv2d, extra=[]),
    dict(id="Conv3d", ours=acnn.Conv3d, theirs=torch.nn.Conv3d, extra=[]),
    dict(id="ConvNd", ours=acnn.ConvNd, theirs=torch.nn.Conv2d, extra=[]),
    dict(id="ConvTranspose1d", ours=acnn.ConvTranspose1d, theirs=torch.nn.ConvTranspose1d, extra=[]),
    dict(id="ConvTranspose2d", ours=acnn.ConvTranspose2d, theirs=torch.nn.ConvTranspose2d, extra=[]),
    dict(id="ConvTranspose3d", ours=acnn.ConvTranspose3d, theirs=torch.nn.ConvTranspose3d, extra=[]),
    dict(
        id="GeneralizedConv1d", ours=acnn.GeneralizedConv1d, theirs=torch.nn.Conv1d, extra=VARIANT_PARAMETERS
    ),
    dict(
        id="GeneralizedConv2d", ours=acnn.GeneralizedConv2d, theirs=torch.nn.Conv2d, extra=VARIANT_PARAMETERS
    ),
    dict(
        id="GeneralizedConv3d", ours=acnn.GeneralizedConv3d, theirs=torch.nn.Conv3d, extra=VARIANT_PARAMETERS
    ),
    dict(
        id="GeneralizedConvNd", ours=acnn.GeneralizedConvNd, theirs=torch.nn.Conv2d, extra=VARIANT_PARAMETERS
    ),
]


def _parameters(cls: type) -> list[tuple[str, inspect._ParameterKind, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(cls).parameters.values()]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_signature_is_torch_plus_the_variant(case):
    assert _parameters(case["ours"]) == _parameters(case["theirs"]) + case["extra"]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_annotations_are_torch_where_torch_gives_them(case):
    ours = inspect.signature(case["ours"], eval_str=True).parameters
    theirs = inspect.signature(case["theirs"], eval_str=True).parameters
    any_n = case["ours"] in (acnn.ConvNd, acnn.GeneralizedConvNd)
    spatial = ("kernel_size", "stride", "padding", "dilation")
    for name, parameter in theirs.items():
        # torch leaves device and dtype bare (ours may annotate them); ConvNd's spatial ones take any N
        if parameter.annotation is not inspect.Parameter.empty and not (any_n and name in spatial):
            assert ours[name].annotation == parameter.annotation, name


def test_convnd_spatial_annotations_take_any_n():
    parameters = inspect.signature(acnn.ConvNd, eval_str=True).parameters
    assert parameters["kernel_size"].annotation == tuple[int, ...]
    assert parameters["padding"].annotation == str | int | tuple[int, ...]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_class_is_a_written_out_subclass_of_torch(case):
    cls = case["ours"]
    assert cls.__name__ == case["id"]
    assert cls.__module__.startswith("anyconv.nn.")
    assert issubclass(cls, _ConvNd)
    assert cls.__doc__


ARGUMENTS = [
    dict(id="2d-ints", cls=acnn.Conv2d, args=(2, 4, 3), kwargs=dict(stride=2, padding=1, dilation=1)),
    dict(id="2d-lists", cls=acnn.Conv2d, args=(2, 4, [3, 2]), kwargs=dict(stride=[1, 2], padding=[1, 0])),
    dict(id="2d-same", cls=acnn.Conv2d, args=(2, 4, 3), kwargs=dict(padding="same")),
    dict(id="1d", cls=acnn.Conv1d, args=(2, 4, 5), kwargs=dict(dilation=2)),
    dict(id="generalized-3d", cls=acnn.GeneralizedConv3d, args=(2, 2, 2), kwargs=dict(variant="l1")),
    dict(id="nd", cls=acnn.ConvNd, args=(2, 2, (2, 2, 2, 2)), kwargs=dict(stride=2, padding=(1,))),
]


@pytest.mark.parametrize("case", ARGUMENTS, ids=[case["id"] for case in ARGUMENTS])
def test_spatial_arguments_are_kept_normalised(case):
    layer = case["cls"](*case["args"], **case["kwargs"])
    ndim = layer.weight.dim() - 2
    for name in ("kernel_size", "stride", "dilation") + (
        () if isinstance(layer.padding, str) else ("padding",)
    ):
        value = getattr(layer, name)
        assert isinstance(value, tuple) and len(value) == ndim, name
        assert all(type(item) is int for item in value), name
