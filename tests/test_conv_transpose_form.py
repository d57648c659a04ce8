"""Which form conv_transpose takes (col2im or phases) and that each gives torch's numbers under
the memory budget's chunks, ``ANYCONV_CONV_TRANSPOSE``, autocast and torch.compile/export."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from test_conv_transpose import FORMS, forced
from torch_reference import CONV_TRANSPOSES

import anyconv
from anyconv.engine.conv_transpose_col2im import col2im_geometry, col2im_sample_bytes
from anyconv.errors import ArgumentError

TRANSPOSE = importlib.import_module("anyconv.engine.conv_transpose")
MiB = 2**20

RULE_CASES = [
    # (id, batch, bytes per sample, budget, form asked for, expected form and samples per chunk)
    ("whole-batch-fits", 8, MiB // 4, 4 * MiB, "auto", ("col2im", 8)),
    ("chunks-of-samples", 32, MiB, 4 * MiB, "auto", ("col2im", 4)),
    ("one-sample-at-a-time", 3, 3 * MiB, 4 * MiB, "auto", ("col2im", 1)),
    ("empty-batch", 0, MiB, 4 * MiB, "auto", ("col2im", 1)),
    ("one-sample-beyond-the-budget", 1, 8 * MiB, 4 * MiB, "auto", ("phases", 0)),
    ("col2im-asked-beyond-the-budget", 2, 8 * MiB, 4 * MiB, "col2im", ("col2im", 1)),
    ("phases-asked", 8, 1, 4 * MiB, "phases", ("phases", 0)),
]


@pytest.mark.parametrize(
    ("batch", "sample_bytes", "budget", "form", "expected"),
    [case[1:] for case in RULE_CASES],
    ids=[case[0] for case in RULE_CASES],
)
def test_the_rule(batch, sample_bytes, budget, form, expected):
    assert TRANSPOSE.transposed_form(batch, sample_bytes, budget, form) == expected


TRACED_CASES = [
    # (id, batch, bytes per sample, budget, form asked for, expected form and samples per chunk)
    ("whole-batch-fits-one-chunk", 8, MiB // 4, 4 * MiB, "auto", ("col2im", 8)),
    ("whole-batch-exactly-fits", 4, MiB, 4 * MiB, "auto", ("col2im", 4)),
    ("whole-batch-past-the-budget", 32, MiB, 4 * MiB, "auto", ("phases", 0)),
    ("col2im-asked-whole-batch", 32, MiB, 4 * MiB, "col2im", ("col2im", 32)),
    ("phases-asked", 8, 1, 4 * MiB, "phases", ("phases", 0)),
]


@pytest.mark.parametrize(
    ("batch", "sample_bytes", "budget", "form", "expected"),
    [case[1:] for case in TRACED_CASES],
    ids=[case[0] for case in TRACED_CASES],
)
def test_the_rule_while_traced_takes_the_whole_batch_or_the_phases(
    batch, sample_bytes, budget, form, expected
):
    # a graph cannot loop a size-dependent number of times: col2im in one chunk where it fits
    assert TRANSPOSE.transposed_form(batch, sample_bytes, budget, form, traced=True) == expected


def test_an_unknown_form_is_refused_naming_the_variable():
    with pytest.raises(
        ArgumentError, match=r"ANYCONV_CONV_TRANSPOSE='fast' is invalid: expected one of 'auto'"
    ):
        TRANSPOSE.transposed_form(1, 1, MiB, "fast")


# (id, input shape, weight shape, stride, padding, output size, budget, form the rule takes)
SHAPE_CASES = [
    # benchmarks/bench_layers.py's transposed rows (U-Net decoders), the default budget
    ("unet-4x4-stride-2", (2, 128, 16, 16), (128, 64, 4, 4), 2, 1, (32, 32), None, ("col2im", 2)),
    ("unet-2x2-stride-2", (2, 256, 28, 28), (256, 128, 2, 2), 2, 0, (56, 56), None, ("col2im", 2)),
    ("unet-4x4-batch-32", (32, 64, 16, 16), (64, 32, 4, 4), 2, 1, (32, 32), None, ("col2im", 7)),
    # tests/test_conv_transpose_memory.py's cases: one sample's columns exceed the 1 MiB budget
    ("memory-7x7-stride-1", (1, 16, 256, 256), (16, 16, 7, 7), 1, 3, (256, 256), MiB, ("phases", 0)),
    ("memory-6x6-stride-2", (1, 16, 384, 384), (16, 16, 6, 6), 2, 2, (768, 768), MiB, ("phases", 0)),
    ("memory-1d-long-kernel", (1, 8, 2**17), (8, 8, 64), 2, 31, (2**18,), MiB, ("phases", 0)),
]


@pytest.mark.parametrize(
    ("input", "weight", "stride", "padding", "output_size", "budget", "expected"),
    [case[1:] for case in SHAPE_CASES],
    ids=[case[0] for case in SHAPE_CASES],
)
def test_the_rule_on_the_benchmark_rows_and_the_memory_cases(
    input, weight, stride, padding, output_size, budget, expected
):
    ndim = len(input) - 2
    geometry = col2im_geometry(input[2:], weight[2:], (stride,) * ndim, (1,) * ndim)
    assert geometry.num_positions == torch.Size(input[2:]).numel()
    sample_bytes = col2im_sample_bytes(geometry, weight[1], output_size, 4)
    budget = anyconv.engine.chunks.resolve_budget(budget)
    assert TRANSPOSE.transposed_form(input[0], sample_bytes, budget, "auto") == expected


def _spied(monkeypatch):
    """Record which form each call takes."""
    taken = []
    for name, form in (
        ("col2im_transpose", "col2im"),
        ("recorded_transpose", "col2im"),
        ("_phases", "phases"),
    ):
        original = getattr(TRANSPOSE, name)

        def spy(*args, original=original, form=form, **kwargs):
            taken.append(form)
            return original(*args, **kwargs)

        monkeypatch.setattr(TRANSPOSE, name, spy)
    return taken


# (id, input shape, weight shape, options, budget, form the call takes): float32
CALL_CASES = [
    (
        "col2im-one-chunk",
        (4, 8, 8, 8),
        (8, 6, 3, 3),
        dict(stride=2, padding=1, output_padding=1),
        None,
        "col2im",
    ),
    # 168 KiB of columns per sample: one sample per chunk of the 256 KiB floor, six chunks
    ("col2im-chunks-of-one-sample", (6, 8, 16, 16), (8, 8, 4, 4), dict(stride=2, padding=1), 1, "col2im"),
    ("col2im-groups-chunks", (5, 8, 16, 16), (8, 4, 4, 4), dict(stride=2, padding=1, groups=2), 1, "col2im"),
    # 6 MiB of columns for one sample, past the 256 KiB floor
    ("phases-one-sample-past-the-budget", (1, 8, 64, 64), (8, 8, 7, 7), dict(padding=3), 1, "phases"),
]


@pytest.mark.parametrize(
    ("input", "weight", "options", "budget", "expected"),
    [case[1:] for case in CALL_CASES],
    ids=[case[0] for case in CALL_CASES],
)
def test_each_call_takes_the_rules_form_and_gives_torchs_numbers(
    monkeypatch, input, weight, options, budget, expected
):
    taken = _spied(monkeypatch)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(input, generator=generator, requires_grad=True)
    w = torch.randn(weight, generator=generator, requires_grad=True)
    b = torch.randn(weight[1] * options.get("groups", 1), generator=generator, requires_grad=True)
    with forced("auto"):
        ours = anyconv.conv_transpose(x, w, b, **options, memory_budget=budget)
    assert taken == [expected]
    theirs = F.conv_transpose2d(x, w, b, **options)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    grad = torch.randn(ours.shape, generator=generator)
    for mine, reference in zip(
        torch.autograd.grad(ours, (x, w, b), grad), torch.autograd.grad(theirs, (x, w, b), grad)
    ):
        torch.testing.assert_close(mine, reference, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("value", ["col2im", "phases"])
def test_the_environment_variable_is_read_at_import(value):
    code = "import json, sys, importlib; module = importlib.import_module('anyconv.engine.conv_transpose'); "
    code += "print(json.dumps(module.FORM))"
    # the child imports the anyconv this test imports
    source = os.path.dirname(os.path.dirname(anyconv.__file__))
    environment = {**os.environ, "ANYCONV_CONV_TRANSPOSE": value, "PYTHONPATH": source}
    completed = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(completed.stdout.splitlines()[-1]) == value


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_runs_in_its_dtype_like_torch(form, dtype):
    generator = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(shape, generator=generator) for shape in ((2, 4, 6, 5), (4, 3, 4, 4), (3,)))
    with forced(form), torch.autocast("cpu", dtype=dtype):
        ours = anyconv.conv_transpose(x, w, b, stride=2, padding=1)
        theirs = F.conv_transpose2d(x, w, b, stride=2, padding=1)
    assert ours.dtype == theirs.dtype == dtype
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-2, atol=5e-2)


COMPILE_CASES = [
    ("2d-4x4-stride-2", (2, 4, 5, 5), (4, 3, 4, 4), dict(stride=2, padding=1)),
    ("1d-groups-output-padding", (2, 4, 7), (4, 2, 3), dict(stride=3, output_padding=2, groups=2)),
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    ("input", "weight", "options"),
    [case[1:] for case in COMPILE_CASES],
    ids=[case[0] for case in COMPILE_CASES],
)
def test_compiles_as_one_graph_and_exports(form, input, weight, options):
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(input, generator=generator, requires_grad=True)
    w = torch.randn(weight, generator=generator, requires_grad=True)
    b = torch.randn(weight[1] * options.get("groups", 1), generator=generator)

    def function(x, w, b):
        return anyconv.conv_transpose(x, w, b, **options)

    class Layer(torch.nn.Module):
        def forward(self, x, w, b):
            return function(x, w, b)

    with forced(form):
        eager = function(x, w, b)
        compiled = torch.compile(function, backend="aot_eager", fullgraph=True)(x, w, b)
        exported = torch.export.export(Layer(), (x.detach(), w.detach(), b)).module()(x, w, b)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(exported, eager)
    grads = torch.autograd.grad(compiled.square().sum(), (x, w))
    for mine, reference in zip(grads, torch.autograd.grad(eager.square().sum(), (x, w))):
        torch.testing.assert_close(mine, reference)
    torch._dynamo.reset()


INFERENCE_CASES = [
    # (id, input, weight, options): float32, through oneDNN's inner product and the native fold
    ("decoder-4x4-stride2", (2, 16, 8, 8), (16, 8, 4, 4), dict(stride=2, padding=1)),
    (
        "groups-output-padding-past-the-image",
        (2, 6, 5, 5),
        (6, 2, 3, 3),
        dict(stride=2, output_padding=1, groups=3),
    ),
    ("dilated-1d", (3, 4, 9), (4, 5, 3), dict(stride=2, padding=2, dilation=2)),
    ("3d", (1, 4, 3, 4, 5), (4, 3, 3, 2, 3), dict(stride=2, padding=1)),
]


def _spy_on_routes(monkeypatch) -> list[str]:
    """The names of the col2im form's routes, appended as each is called."""
    taken: list[str] = []
    for name in ("folded_transpose", "col2im_transpose", "recorded_transpose"):
        original = getattr(TRANSPOSE, name)
        monkeypatch.setattr(
            TRANSPOSE, name, lambda *args, _f=original, _n=name, **kw: taken.append(_n) or _f(*args, **kw)
        )
    return taken


@pytest.mark.parametrize(
    ("input", "weight", "options"),
    [case[1:] for case in INFERENCE_CASES],
    ids=[case[0] for case in INFERENCE_CASES],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_folds_the_columns_without_autograd(monkeypatch, input, weight, options, channels_last):
    """No gradient to record, taps that overlap at a stride: the col2im form multiplies without
    autograd and folds the columns in the fields path's layout (folded_transpose); with a
    gradient to record, the same fold under an autograd Function (recorded_transpose)."""
    taken = _spy_on_routes(monkeypatch)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(input, generator=generator)
    if channels_last and x.dim() in (4, 5):
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    w = torch.randn(weight, generator=generator)
    b = torch.randn(weight[1] * options.get("groups", 1), generator=generator)
    reference = CONV_TRANSPOSES[w.dim() - 2](x, w, b, **options)
    with forced("auto"):
        ours = anyconv.conv_transpose(x, w, b, **options)
        with torch.inference_mode():
            in_inference_mode = anyconv.conv_transpose(x, w, b, **options)
        recorded = anyconv.conv_transpose(x, w.requires_grad_(), b, **options)
    assert taken == ["folded_transpose", "folded_transpose", "recorded_transpose"]
    for result in (ours, in_inference_mode, recorded):
        torch.testing.assert_close(result, reference, rtol=1e-4, atol=1e-4)
        # the layout of the autograd form (torch's own in 2-D: test_conv_transpose's layout test)
        assert result.stride() == recorded.stride()


@pytest.mark.parametrize(
    ("channels", "inferred"), [(256, "folded_transpose"), (64, "col2im_transpose")], ids=["256", "64"]
)
def test_taps_that_tile_fold_on_many_channels_and_keep_col2im_when_recorded(monkeypatch, channels, inferred):
    """A 2x2 kernel at stride 2 (taps that never overlap): without a gradient to record, the fold
    from MIN_TILING_FOLD_CHANNELS input channels, col2im's reordering copy below; recorded, col2im."""
    taken = _spy_on_routes(monkeypatch)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 5, 6, generator=generator, dtype=torch.float64)
    w = torch.randn(channels, 3, 2, 2, generator=generator, dtype=torch.float64)
    b = torch.randn(3, generator=generator, dtype=torch.float64)
    reference = F.conv_transpose2d(x, w, b, stride=2)
    with forced("auto"):
        with torch.no_grad():
            ours = anyconv.conv_transpose(x, w, b, stride=2)
        recorded = anyconv.conv_transpose(x, w.requires_grad_(), b, stride=2)
    assert taken == [inferred, "col2im_transpose"]
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(recorded, reference)
    (got,) = torch.autograd.grad(recorded.square().sum(), w)
    (want,) = torch.autograd.grad(F.conv_transpose2d(x, w, b, stride=2).square().sum(), w)
    torch.testing.assert_close(got, want)
