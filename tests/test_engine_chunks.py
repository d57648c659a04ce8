"""Chunk planning and chunked contraction with the dot variant: every (sample, output row) covered
once, chunks under the budget, and the same numbers (forward and gradients) for any budget."""

from __future__ import annotations

import pytest
import torch

import anyconv
from anyconv.engine.chunks import plan_chunks
from anyconv.geometry import make_geometry

DOUBLE = torch.float64

PLANS = [
    dict(id="whole-samples", size=(34, 34), kernel=3, stride=1, batch=8, bytes_per_field=36, budget=2**16),
    dict(id="row-ranges", size=(34, 34), kernel=3, stride=1, batch=3, bytes_per_field=36, budget=500),
    dict(id="one-row-each", size=(9, 40), kernel=(3, 5), stride=2, batch=2, bytes_per_field=100, budget=1),
    dict(id="3d", size=(8, 6, 6), kernel=2, stride=(2, 1, 1), batch=5, bytes_per_field=24, budget=300),
]


@pytest.mark.parametrize("case", PLANS, ids=[case["id"] for case in PLANS])
def test_chunks_cover_every_sample_and_row_once_within_budget(case):
    geometry = make_geometry(case["size"], case["kernel"], case["stride"])
    chunks = plan_chunks(geometry, case["batch"], case["bytes_per_field"], case["budget"])
    covered = torch.zeros(case["batch"], geometry.output_size[0], dtype=torch.int64)
    fields_per_row = geometry.num_positions // geometry.output_size[0]
    for chunk in chunks:
        covered[chunk.samples, chunk.rows] += 1
        rows = chunk.rows.stop - chunk.rows.start
        assert chunk.geometry.output_size == (rows, *geometry.output_size[1:])
        assert chunk.num_fields == (chunk.samples.stop - chunk.samples.start) * rows * fields_per_row
        # over budget only when a single output row of a single sample is already larger
        single_row = chunk.samples.stop - chunk.samples.start == 1 and rows == 1
        assert chunk.num_fields * case["bytes_per_field"] <= case["budget"] or single_row
    assert torch.equal(covered, torch.ones_like(covered))


BUDGETS = [1, 4096, 2**20, None]
GEOMETRIES = [
    dict(
        id="2d-groups-padded",
        input=(5, 4, 11, 9),
        weight=(6, 2, 3, 3),
        padding=(2, 1),
        stride=(2, 1),
        groups=2,
    ),
    dict(id="2d-reflect", input=(3, 3, 8, 8), weight=(4, 3, 3, 3), padding=1, padding_mode="reflect"),
    dict(id="3d-dilated", input=(2, 2, 7, 6, 5), weight=(3, 2, 2, 2, 2), padding=1, dilation=2),
    dict(id="1d", input=(4, 3, 20), weight=(2, 3, 5), stride=3, padding=4),
]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("case", GEOMETRIES, ids=[case["id"] for case in GEOMETRIES])
def test_any_memory_budget_gives_the_same_forward_and_gradients(case, budget):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(case["input"], dtype=DOUBLE, generator=generator, requires_grad=True)
    w = torch.randn(case["weight"], dtype=DOUBLE, generator=generator, requires_grad=True)
    options = {
        key: case[key] for key in ("padding", "stride", "dilation", "groups", "padding_mode") if key in case
    }
    reference = anyconv.conv(x, w, **options, memory_budget=2**30)
    out = anyconv.conv(x, w, **options, memory_budget=budget)
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
    grad = torch.randn(out.shape, dtype=DOUBLE, generator=generator)
    for mine, expected in zip(
        torch.autograd.grad(out, (x, w), grad), torch.autograd.grad(reference, (x, w), grad)
    ):
        torch.testing.assert_close(mine, expected, rtol=1e-12, atol=1e-12)


def test_backward_keeps_only_input_and_weight():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    saved = []

    def pack(tensor):
        saved.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        anyconv.conv(x, w, padding=1)
    assert sorted(saved) == sorted([x.shape, w.shape])
