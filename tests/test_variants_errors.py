# ruff: noqa: E501  (one case per line: the table reads as a table)
"""Issue #14's error findings: per-channel options checked against the weight, dtypes checked per
variant, a user variant's wrong output shape named; each refused with anyconv's clear errors.
"""

import pytest
import torch

import anyconv
from anyconv.errors import ArgumentError, ArgumentTypeError
from anyconv.variants import Variant

X, W = torch.randn(1, 2, 6, 6), torch.randn(6, 2, 3, 3)


def _module(variant, **options):
    return lambda: anyconv.nn.GeneralizedConv2d(2, 6, 3, variant=variant, **options)


def _call(variant, **options):
    return lambda: anyconv.generalized_conv(X, W, variant, **options)


def _grouped_call(variant, **options):
    return lambda: anyconv.generalized_conv(
        torch.randn(1, 4, 6, 6), torch.randn(6, 2, 3, 3), variant, groups=2, **options
    )


OPTION_LENGTH_CASES = [
    ("module-rbf-gamma", _module("rbf", gamma=torch.ones(5)), r"gamma.* 5 values.*out_channels=6"),
    ("module-sharpened-q", _module("sharpened_cosine", q=torch.ones(7)), r"q.* 7 values.*out_channels=6"),
    ("module-polynomial-c", _module("polynomial", c=torch.ones(3)), r"c.* 3 values.*out_channels=6"),
    ("call-rbf-gamma", _call("rbf", gamma=torch.ones(5)), r"gamma.* 5 values.*out_channels=6"),
    ("call-sharpened-exponent", _call("sharpened_cosine", exponent=torch.ones(12)), r"exponent.* 12 values.*out_channels=6"),
    ("call-grouped", _grouped_call("rbf", gamma=torch.ones(3)), r"gamma.* 3 values.*out_channels=6"),
    ("convert-rbf-gamma", lambda: anyconv.convert(torch.nn.Sequential(torch.nn.Conv2d(2, 6, 3)), "rbf", gamma=torch.ones(5)), r"gamma.* 5 values.*out_channels=6"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "message"), [c[1:] for c in OPTION_LENGTH_CASES], ids=[c[0] for c in OPTION_LENGTH_CASES]
)
def test_per_channel_option_of_the_wrong_length_is_refused_by_name(make, message):
    with pytest.raises(ArgumentError, match=message):
        make()


def test_per_channel_options_of_the_right_length_or_one_value_are_accepted():
    assert anyconv.generalized_conv(X, W, "rbf", gamma=torch.full((6,), 0.1)).shape == (1, 6, 4, 4)
    assert anyconv.generalized_conv(X, W, "rbf", gamma=torch.tensor(0.1)).shape == (1, 6, 4, 4)
    assert anyconv.nn.GeneralizedConv2d(2, 6, 3, variant="rbf", gamma=torch.ones(6))(X).shape == (1, 6, 4, 4)


#: (variant, dtype): a variant refuses a dtype its formula has no meaning or kernel for
DTYPE_CASES = [
    ("l2", torch.int64), ("rbf", torch.int32), ("cosine", torch.int64), ("lp", torch.int64),
    ("sharpened_cosine", torch.int64), ("polynomial", torch.int64),
    ("l2", torch.complex64), ("max_plus", torch.complex64), ("min_plus", torch.complex128),
    ("l1", torch.complex64), ("cosine", torch.complex64), ("rbf", torch.complex128),
]  # fmt: skip


@pytest.mark.parametrize(("variant", "dtype"), DTYPE_CASES, ids=[f"{v}-{str(d)[6:]}" for v, d in DTYPE_CASES])
def test_unsupported_dtype_is_refused_up_front(variant, dtype):
    input = torch.ones(1, 2, 5, 5).to(dtype)
    weight = torch.ones(3, 2, 3, 3).to(dtype)
    with pytest.raises(ArgumentTypeError, match=rf"{str(dtype)[6:]}.*{variant}.*supports"):
        anyconv.generalized_conv(input, weight, variant)


@pytest.mark.parametrize("variant", ["dot", "max_plus", "l1"])
def test_bool_tensors_are_refused_for_every_variant(variant):
    with pytest.raises(ArgumentTypeError, match=r"torch\.bool.*floating, complex or integer"):
        anyconv.generalized_conv(
            torch.ones(1, 2, 5, 5, dtype=torch.bool), torch.ones(3, 2, 3, 3, dtype=torch.bool), variant
        )


@pytest.mark.parametrize(
    ("variant", "dtype"),
    [
        ("dot", torch.int64),
        ("dot", torch.complex64),
        ("l1", torch.int64),
        ("max_plus", torch.int32),
        ("min_plus", torch.uint8),
    ],
)
def test_dtypes_a_variant_supports_still_run(variant, dtype):
    input = torch.ones(1, 2, 5, 5).to(dtype)
    weight = torch.ones(3, 2, 3, 3).to(dtype)
    assert anyconv.generalized_conv(input, weight, variant).dtype == dtype


class _WrongShape(Variant):
    name = "wrong_shape"

    def contract(self, fields, filters):
        return torch.bmm(fields, filters.mT)[:, :, :-1]


class _Flat(Variant):
    name = "flat"

    def contract(self, fields, filters):
        return torch.bmm(fields, filters.mT).flatten(1)


@pytest.mark.parametrize("variant", [_WrongShape, _Flat], ids=["one-filter-short", "flattened"])
def test_a_user_variant_returning_the_wrong_shape_is_named(variant):
    with pytest.raises(
        ArgumentError, match=rf"{variant.name!r}.*returned shape \(1, (16|96)\b.*expected \(1, 16, 6\)"
    ):
        anyconv.generalized_conv(X, W, variant)
