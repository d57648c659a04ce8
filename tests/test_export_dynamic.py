"""torch.export with dynamic batch and spatial sizes: one program runs every size, equal to eager.

The sizes are symbols through the engine's planning (no guard pins them); the exported program
runs at sizes other than the example's, forward and backward.
"""

import importlib

import pytest
import torch
from torch.export import Dim

import anyconv

TRANSPOSE = importlib.import_module("anyconv.engine.conv_transpose")

#: id -> (module factory, the anyconv ops its program calls)
MODULES = {
    # a dense standard convolution: the tap loops' filter blocks
    "conv-tap-loops": (lambda: anyconv.nn.Conv2d(4, 6, 3, padding=1, stride=(2, 1)), {"tap_loops"}),
    "rbf-fields": (
        lambda: anyconv.nn.GeneralizedConv2d(4, 6, 3, padding=1, variant="rbf", gamma=0.1),
        {"generalized_conv"},
    ),
    "conv-reflect": (
        lambda: anyconv.nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
        {"tap_loops"},
    ),
    # fewer filters than a filter block: the fields path
    "l1-fields": (
        lambda: anyconv.nn.GeneralizedConv2d(4, 3, 3, padding=1, variant="l1"),
        {"generalized_conv"},
    ),
    "max_plus-filter-blocks": (
        lambda: anyconv.nn.GeneralizedConv2d(4, 8, 3, padding=1, variant="max_plus"),
        {"tap_loops"},
    ),
    "l1-tap-loops": (
        lambda: anyconv.nn.GeneralizedConv2d(4, 8, 3, padding=1, groups=4, variant="l1"),
        {"tap_loops"},
    ),
    "cosine-tap-products": (
        lambda: anyconv.nn.GeneralizedConv2d(4, 8, 3, padding=1, groups=4, variant="cosine"),
        {"tap_loops"},
    ),
    "conv-pointwise-strided": (lambda: anyconv.nn.Conv2d(4, 6, 1, stride=2), set()),
    # the col2im form: a matrix product and col2im's strided adds, no anyconv op
    "transpose-col2im": (
        lambda: anyconv.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
        set(),
    ),
}
#: (batch, height, width) of the example, then of the calls of the exported program
SIZES = [(2, 9, 11), (3, 12, 7), (1, 5, 16)]
DYNAMIC = {"input": {0: Dim("batch", min=1), 2: Dim("height", min=3), 3: Dim("width", min=3)}}


def _anyconv_ops(program):
    return {
        node.target.name().split("::")[1]
        for node in program.graph.nodes
        if node.op == "call_function" and str(node.target).startswith("anyconv.")
    }


@pytest.mark.parametrize("name", MODULES)
def test_one_exported_program_runs_every_size(name):
    factory, ops = MODULES[name]
    torch.manual_seed(0)
    _check_one_program(factory(), ops)


def test_one_exported_program_of_the_transposed_phase_form_runs_every_size(monkeypatch):
    # the phases: stride-1 convolutions through the engine's op (the tap loops' filter blocks),
    # interleaved
    monkeypatch.setattr(TRANSPOSE, "FORM", "phases")
    torch.manual_seed(0)
    _check_one_program(anyconv.nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1), {"tap_loops"})


def _check_one_program(module, ops):
    batch, height, width = SIZES[0]
    program = torch.export.export(module, (torch.randn(batch, 4, height, width),), dynamic_shapes=DYNAMIC)
    assert _anyconv_ops(program) == ops
    exported = program.module()
    for batch, height, width in SIZES[1:]:
        input = torch.randn(batch, 4, height, width, requires_grad=True)
        output = exported(input)
        torch.testing.assert_close(output, module(input), rtol=1e-5, atol=1e-5)
        (got,) = torch.autograd.grad(output.square().sum(), input)
        (expected,) = torch.autograd.grad(module(input).square().sum(), input)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
