# ruff: noqa: E501  (one case per line: the table reads as a table)
"""Bad input meets a clear ValueError/TypeError naming the argument, the value and what is valid.

Each row is (id, call, exception type, regex the message must match). anyconv's own errors are
``ArgumentError`` (a ValueError) and ``ArgumentTypeError`` (a TypeError); the few rows that keep
torch's own wording (``nn`` constructor arguments torch checks itself) expect torch's ValueError.
"""

import pytest
import torch

import anyconv
from anyconv import ArgumentError, ArgumentTypeError
from anyconv.variants import Variant


def x(*shape, **kwargs):
    return torch.zeros(*shape, **kwargs)


X = x(2, 4, 8, 8)
W = x(6, 4, 3, 3)
COLUMNS = x(1, 9, 16)  # fold's input for output_size (4, 4), kernel 3, padding 1

CASES = [
    # conv: integer arguments
    ("conv-stride-float", lambda: anyconv.conv(X, W, stride=1.5), ArgumentTypeError, r"stride=1\.5 .*integer"),
    ("conv-stride-zero", lambda: anyconv.conv(X, W, stride=0), ArgumentError, r"stride=0 .*>= 1"),
    ("conv-stride-bool", lambda: anyconv.conv(X, W, stride=True), ArgumentTypeError, r"stride=True .*not a bool"),
    ("conv-stride-length", lambda: anyconv.conv(X, W, stride=(1, 2, 3)), ArgumentError, r"stride=\(1, 2, 3\) .*2 ints"),
    ("conv-dilation-zero", lambda: anyconv.conv(X, W, dilation=0), ArgumentError, r"dilation=0 .*>= 1"),
    ("conv-padding-negative", lambda: anyconv.conv(X, W, padding=-1), ArgumentError, r"padding=-1 .*non-negative"),
    ("conv-padding-string", lambda: anyconv.conv(X, W, padding="full"), ArgumentError, r"padding='full' .*'same', 'valid'"),
    ("conv-padding-none", lambda: anyconv.conv(X, W, padding=None), ArgumentTypeError, r"padding=None .*integer"),
    ("conv-padding-triple", lambda: anyconv.conv(X, W, padding=((1, 2, 3), 1)), ArgumentError, r"padding=.*\(before, after\) pairs"),
    ("conv-same-strided", lambda: anyconv.conv(X, W, padding="same", stride=2), ArgumentError, r"padding='same' .*strided"),
    ("conv-padding-mode", lambda: anyconv.conv(X, W, padding=1, padding_mode="mirror"), ArgumentError, r"padding_mode='mirror' .*'reflect'"),
    ("conv-reflect-too-wide", lambda: anyconv.conv(X, W, padding=8, padding_mode="reflect"), ArgumentError, r"padding=.*reflect.*smaller than the input size"),
    ("conv-circular-too-wide", lambda: anyconv.conv(X, W, padding=9, padding_mode="circular"), ArgumentError, r"padding=.*circular.*at most the input size"),
    ("conv-kernel-too-large", lambda: anyconv.conv(x(1, 4, 2, 2), W), ArgumentError, r"kernel_size=\(3, 3\) .*fits the padded input.*\(2, 2\)"),
    # conv: groups
    ("conv-groups-zero", lambda: anyconv.conv(X, W, groups=0), ArgumentError, r"groups=0 .*positive"),
    ("conv-groups-float", lambda: anyconv.conv(X, W, groups=2.0), ArgumentTypeError, r"groups=2\.0 .*integer"),
    ("conv-groups-not-divisor", lambda: anyconv.conv(X, W, groups=4), ArgumentError, r"groups=4 .*divisor of out_channels=6"),
    ("conv-groups-channels", lambda: anyconv.conv(X, x(6, 4, 3, 3), groups=2), ArgumentError, r"4 channels.*groups=2 expects 8"),
    # conv: tensors, ranks, channels
    ("conv-input-list", lambda: anyconv.conv([1.0], W), ArgumentTypeError, r"input=\[1\.0\] has type list.*torch\.Tensor"),
    ("conv-input-numpy", lambda: anyconv.conv(X.numpy(), W), ArgumentTypeError, r"input=<ndarray of shape \(2, 4, 8, 8\)>"),
    ("conv-weight-none", lambda: anyconv.conv(X, None), ArgumentTypeError, r"weight=None .*torch\.Tensor"),
    ("conv-weight-rank", lambda: anyconv.conv(X, x(3)), ArgumentError, r"weight of shape \(3,\) .*at least one spatial"),
    ("conv-weight-zero-out", lambda: anyconv.conv(X, x(0, 4, 3, 3)), ArgumentError, r"weight of shape \(0, 4, 3, 3\) .*positive"),
    ("conv-weight-zero-kernel", lambda: anyconv.conv(X, x(6, 4, 0, 3)), ArgumentError, r"weight of shape \(6, 4, 0, 3\) .*positive"),
    ("conv-input-rank", lambda: anyconv.conv(x(8, 8), W), ArgumentError, r"input of shape \(8, 8\) .*4-D.*or 3-D"),
    ("conv-input-rank-high", lambda: anyconv.conv(x(1, 2, 4, 8, 8), W), ArgumentError, r"input of shape \(1, 2, 4, 8, 8\)"),
    ("conv-channels", lambda: anyconv.conv(x(2, 3, 8, 8), W), ArgumentError, r"3 channels.*expects 4"),
    ("conv-bias-shape", lambda: anyconv.conv(X, W, x(5)), ArgumentError, r"bias of shape \(5,\) .*\(6,\)"),
    ("conv-bias-2d", lambda: anyconv.conv(X, W, x(6, 1)), ArgumentError, r"bias of shape \(6, 1\) .*\(6,\)"),
    ("conv-bias-int", lambda: anyconv.conv(X, W, 3), ArgumentTypeError, r"bias=3 has type int.*Tensor or None"),
    ("conv-bool-input", lambda: anyconv.conv(X.bool(), W.bool()), ArgumentTypeError, r"torch\.bool.*multiplies and adds"),
    # conv: dtype and device mismatches ('meta' stands in for another device)
    ("conv-weight-dtype", lambda: anyconv.conv(X, W.double()), ArgumentTypeError, r"weight has dtype torch\.float64 but input has dtype torch\.float32"),
    ("conv-bias-dtype", lambda: anyconv.conv(X, W, x(6, dtype=torch.float16)), ArgumentTypeError, r"bias has dtype torch\.float16"),
    ("conv-weight-device", lambda: anyconv.conv(X, W.to("meta")), ArgumentError, r"weight is on device meta but input is on cpu"),
    ("conv-bias-device", lambda: anyconv.conv(X, W, x(6, device="meta")), ArgumentError, r"bias is on device meta"),
    ("conv-input-device", lambda: anyconv.conv(X.to("meta"), W), ArgumentError, r"weight is on device cpu but input is on meta"),
    ("conv-memory-budget-zero", lambda: anyconv.conv(X, W, memory_budget=0), ArgumentError, r"memory_budget=0 .*positive number of bytes"),
    ("conv-memory-budget-float", lambda: anyconv.conv(X, W, memory_budget=1e6), ArgumentTypeError, r"memory_budget=1000000\.0"),
    ("conv-memory-budget-bool", lambda: anyconv.conv(X, W, memory_budget=True), ArgumentTypeError, r"memory_budget=True"),
    # variants
    ("variant-unknown", lambda: anyconv.generalized_conv(X, W, "l9"), ArgumentError, r"variant='l9' .*'dot'"),
    ("variant-type", lambda: anyconv.generalized_conv(X, W, 3), ArgumentTypeError, r"variant=3 has type int.*variant name"),
    ("variant-class-not-variant", lambda: anyconv.generalized_conv(X, W, dict), ArgumentTypeError, r"variant=<class 'dict'>"),
    ("variant-option-unknown", lambda: anyconv.generalized_conv(X, W, "dot", p=2), ArgumentError, r"p=2 is not an option of variant 'dot'"),
    ("variant-instance-options", lambda: anyconv.generalized_conv(X, W, anyconv.variants.Dot(), p=2), ArgumentError, r"options \['p'\] .*variant instance"),
    ("variant-no-contract", lambda: anyconv.generalized_conv(X, W, Variant), NotImplementedError, r"must define contract"),
    # unfold / patches
    ("unfold-kernel-float", lambda: anyconv.unfold(X, 2.5), ArgumentTypeError, r"kernel_size=2\.5 .*integer"),
    ("unfold-kernel-zero", lambda: anyconv.unfold(X, 0), ArgumentError, r"kernel_size=0 .*>= 1"),
    ("unfold-kernel-too-large", lambda: anyconv.unfold(X, 9), ArgumentError, r"kernel_size=\(9, 9\) .*fits"),
    ("unfold-padding-negative", lambda: anyconv.unfold(X, 3, padding=-1), ArgumentError, r"padding=-1"),
    ("unfold-rank-int", lambda: anyconv.unfold(x(8), 3), ArgumentError, r"input of shape \(8,\) .*at least one spatial"),
    ("unfold-rank-tuple", lambda: anyconv.unfold(x(8), (3, 3)), ArgumentError, r"input of shape \(8,\) .*4 dimensions.*or 3"),
    ("unfold-padding-mode", lambda: anyconv.unfold(X, 3, padding=1, padding_mode="bad"), ArgumentError, r"padding_mode='bad'"),
    ("unfold-not-tensor", lambda: anyconv.unfold("image", 3), ArgumentTypeError, r"input='image' has type str"),
    ("patches-kernel-negative", lambda: anyconv.patches(X, -1), ArgumentError, r"kernel_size=-1 .*>= 1"),
    ("patches-stride-string", lambda: anyconv.patches(X, 3, stride="2"), ArgumentTypeError, r"stride='2' has type str"),
    ("patches-dilation-length", lambda: anyconv.patches(X, (3, 3), dilation=(1, 1, 1)), ArgumentError, r"dilation=\(1, 1, 1\) .*2 ints"),
    # fold
    ("fold-blocks", lambda: anyconv.fold(x(1, 9, 15), (4, 4), 3, padding=1), ArgumentError, r"shape \(1, 9, 15\) .*16 blocks"),
    ("fold-rows", lambda: anyconv.fold(x(1, 10, 16), (4, 4), 3, padding=1), ArgumentError, r"shape \(1, 10, 16\) .*multiple of 9 rows"),
    ("fold-rank", lambda: anyconv.fold(x(1, 1, 9, 16), (4, 4), 3, padding=1), ArgumentError, r"shape \(1, 1, 9, 16\) .*3 dimensions"),
    ("fold-output-size-zero", lambda: anyconv.fold(COLUMNS, (0, 4), 3, padding=1), ArgumentError, r"output_size=\(0, 4\) .*>= 1"),
    ("fold-output-size-float", lambda: anyconv.fold(COLUMNS, (4.0, 4), 3, padding=1), ArgumentTypeError, r"output_size=4\.0"),
    ("fold-stride-zero", lambda: anyconv.fold(COLUMNS, (4, 4), 3, padding=1, stride=0), ArgumentError, r"stride=0"),
    ("fold-not-tensor", lambda: anyconv.fold(None, (4, 4), 3), ArgumentTypeError, r"input=None .*torch\.Tensor"),
    # geometry
    ("geometry-input-size-int", lambda: anyconv.make_geometry(5, 3), ArgumentError, r"input_size=5 .*tuple of spatial sizes"),
    ("geometry-input-size-negative", lambda: anyconv.make_geometry((-1,), 3), ArgumentError, r"input_size=\(-1,\) .*non-negative"),
    # nn modules: checked at construction, not deep in the first forward
    ("nn-stride-zero", lambda: anyconv.nn.Conv2d(4, 6, 3, stride=0), ArgumentError, r"stride=\(0, 0\) .*>= 1"),
    ("nn-padding-negative", lambda: anyconv.nn.Conv1d(4, 6, 3, padding=-1), ArgumentError, r"padding=\(-1,\) .*>= 0"),
    ("nn-dilation-zero", lambda: anyconv.nn.Conv3d(4, 6, 3, dilation=(1, 0, 1)), ArgumentError, r"dilation=\(1, 0, 1\)"),
    ("nn-in-channels-zero", lambda: anyconv.nn.Conv2d(0, 6, 3), ArgumentError, r"in_channels=0 .*positive"),
    ("nn-out-channels-float", lambda: anyconv.nn.Conv2d(4, 6.0, 3), ArgumentTypeError, r"out_channels=6\.0 .*integer"),
    ("nn-groups", lambda: anyconv.nn.Conv2d(4, 6, 3, groups=4), ValueError, r"^out_channels must be divisible by groups$"),
    ("nn-groups-zero", lambda: anyconv.nn.Conv2d(4, 6, 3, groups=0), ArgumentError, r"groups=0 .*positive"),
    ("nn-padding-mode", lambda: anyconv.nn.Conv2d(4, 6, 3, padding_mode="x"), ValueError, r"padding_mode.*'x'"),
    ("nn-same-strided", lambda: anyconv.nn.Conv2d(4, 6, 3, padding="same", stride=2), ValueError, r"padding='same'.*strided"),
    ("nn-forward-channels", lambda: anyconv.nn.Conv2d(4, 6, 3)(x(1, 3, 8, 8)), ArgumentError, r"3 channels.*expects 4"),
    ("nn-convnd-kernel-int", lambda: anyconv.nn.ConvNd(4, 6, 3), ArgumentTypeError, r"kernel_size=3 has type int.*tuple of N ints"),
    ("nn-convnd-kernel-zero", lambda: anyconv.nn.ConvNd(4, 6, (3, 0)), ArgumentError, r"kernel_size=\(3, 0\)"),
    ("nn-variant-unknown", lambda: anyconv.nn.GeneralizedConv2d(4, 6, 3, variant="nope"), ArgumentError, r"variant='nope'"),
    ("nn-variant-option", lambda: anyconv.nn.GeneralizedConv2d(4, 6, 3, variant="dot", gamma=1.0), ArgumentError, r"gamma=1\.0 is not an option of variant 'dot'"),
]  # fmt: skip

# conv_transpose lands from another branch; these rows run as soon as it does.
WT = x(4, 3, 3, 3)  # (in_channels, out_channels // groups, *kernel)
TRANSPOSED_CASES = [
    ("transpose-output-padding", lambda: anyconv.conv_transpose(X, WT, stride=2, output_padding=2), ValueError, r"output_padding=\(?2(, 2\))? .*smaller than either stride"),
    ("transpose-output-padding-no-stride", lambda: anyconv.conv_transpose(X, WT, output_padding=1), ValueError, r"output_padding=\(?1"),
    ("transpose-output-padding-negative", lambda: anyconv.conv_transpose(X, WT, stride=2, output_padding=-1), ValueError, r"output_padding=-1"),
    ("transpose-channels", lambda: anyconv.conv_transpose(x(2, 5, 8, 8), WT), ValueError, r"5 channels.*expects 4"),
    ("transpose-groups", lambda: anyconv.conv_transpose(X, WT, groups=3), ValueError, r"groups=3 .*divisor"),
    ("transpose-bias-shape", lambda: anyconv.conv_transpose(X, WT, x(4)), ValueError, r"bias of shape \(4,\) .*\(3,\)"),
    ("transpose-weight-dtype", lambda: anyconv.conv_transpose(X, WT.double()), TypeError, r"weight has dtype torch\.float64"),
    ("transpose-stride-zero", lambda: anyconv.conv_transpose(X, WT, stride=0), ValueError, r"stride=0"),
]  # fmt: skip

needs_transpose = pytest.mark.skipif(
    not hasattr(anyconv, "conv_transpose"), reason="anyconv.conv_transpose not merged yet (branch conv)"
)


def _params(cases, marks=()):
    return [pytest.param(call, error, pattern, id=name, marks=marks) for name, call, error, pattern in cases]


def test_the_table_is_large_and_unique():
    names = [case[0] for case in CASES + TRANSPOSED_CASES]
    assert len(CASES) >= 30
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("call", "error", "pattern"), _params(CASES) + _params(TRANSPOSED_CASES, needs_transpose)
)
def test_bad_input_gives_a_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern) as caught:
        call()
    # every anyconv error is still a ValueError or TypeError for callers that do not know anyconv
    assert isinstance(caught.value, (ValueError, TypeError, NotImplementedError))


def test_anyconv_errors_derive_from_the_builtin_ones():
    assert issubclass(ArgumentError, ValueError)
    assert issubclass(ArgumentTypeError, TypeError)


@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
def test_a_message_names_the_argument_and_the_value(name):
    with pytest.raises(ArgumentError) as caught:
        anyconv.unfold(X, 3, **{name: -2})
    message = str(caught.value)
    assert message.startswith(f"{name}=-2 is invalid: expected ")


def test_long_values_are_shortened_in_messages():
    with pytest.raises(ArgumentTypeError) as caught:
        anyconv.conv(list(range(1000)), W)
    assert len(str(caught.value)) < 200
