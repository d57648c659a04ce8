"""Chunk planning and chunked contraction with the dot variant: every (sample, output position)
covered once, chunks under the budget on every layout, and the same numbers (forward and gradients)
for any budget; tiny budgets floored."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import count_calls, take_views_everywhere

import anyconv
from anyconv.engine import chunks as chunks_module
from anyconv.engine import contraction as contraction_module
from anyconv.engine import fields as fields_module
from anyconv.engine.chunks import plan_chunks
from anyconv.geometry import make_geometry

DOUBLE = torch.float64
#: the chunked contraction of the fields path: the tap loops' filter blocks would take the dense
#: standard convolutions (see conftest.fields_for_dense)
pytestmark = pytest.mark.usefixtures("fields_for_dense")

PLANS = [
    dict(id="whole-samples", size=(34, 34), kernel=3, stride=1, batch=8, bytes_per_field=36, budget=2**16),
    dict(id="row-ranges", size=(34, 34), kernel=3, stride=1, batch=3, bytes_per_field=36, budget=500),
    dict(id="one-row-each", size=(9, 40), kernel=(3, 5), stride=2, batch=2, bytes_per_field=100, budget=1),
    dict(id="3d", size=(8, 6, 6), kernel=2, stride=(2, 1, 1), batch=5, bytes_per_field=24, budget=300),
    # (B, C, 1, T): one output row, split along time
    dict(id="audio", size=(1, 4000), kernel=(1, 9), stride=1, batch=2, bytes_per_field=144, budget=2**14),
    dict(id="long-1d", size=(100_000,), kernel=9, stride=2, batch=1, bytes_per_field=144, budget=2**14),
    dict(
        id="3d-one-plane",
        size=(1, 40, 40),
        kernel=(1, 3, 3),
        stride=1,
        batch=2,
        bytes_per_field=64,
        budget=4000,
    ),
    dict(
        id="3d-planes-split",
        size=(3, 9, 50),
        kernel=(2, 3, 3),
        stride=1,
        batch=2,
        bytes_per_field=64,
        budget=900,
    ),
    dict(id="one-position-each", size=(2, 3, 4), kernel=1, stride=1, batch=2, bytes_per_field=64, budget=1),
    # 1365 positions fit: three of them and one of a single position, balanced into four of 1024
    dict(id="tiny-remainder", size=(4098,), kernel=3, stride=1, batch=2, bytes_per_field=3, budget=4095),
]


@pytest.mark.parametrize("case", PLANS, ids=[case["id"] for case in PLANS])
def test_chunks_cover_every_sample_and_position_once_within_budget(case):
    geometry = make_geometry(case["size"], case["kernel"], case["stride"])
    chunks = plan_chunks(geometry, case["batch"], case["bytes_per_field"], case["budget"])
    covered = torch.zeros(case["batch"], *geometry.output_size, dtype=torch.int64)
    for chunk in chunks:
        covered[(chunk.samples, *chunk.region)] += 1
        sizes = tuple(part.stop - part.start for part in chunk.region)
        assert chunk.geometry.output_size == sizes
        samples = chunk.samples.stop - chunk.samples.start
        assert chunk.num_fields == samples * math.prod(sizes)
        # the slab is what the region's fields read of the padded input
        for part, slab, step, span in zip(chunk.region, chunk.slab, geometry.stride, geometry.field_span):
            assert (slab.start, slab.stop) == (part.start * step, (part.stop - 1) * step + span)
        # over budget only when a single output position of a single sample is already larger
        single = samples == 1 and math.prod(sizes) == 1
        assert chunk.num_fields * case["bytes_per_field"] <= case["budget"] or single
    assert torch.equal(covered, torch.ones_like(covered))
    # no chunk of a few positions beside full ones: each its own overhead for little work
    sizes = [chunk.num_fields for chunk in chunks]
    assert 2 * min(sizes) >= max(sizes)


def test_a_plan_is_not_a_list_of_every_output_row():
    # a budget that fits every sample whole gives one chunk per batch of samples, whatever the rows
    geometry = make_geometry((10**6,), 3)
    assert len(plan_chunks(geometry, 4, 1, 2**30)) == 1


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
    dict(id="audio", input=(2, 4, 1, 40), weight=(5, 4, 1, 5), padding=(0, 2)),
    dict(
        id="3d-one-plane", input=(2, 4, 1, 9, 8), weight=(3, 4, 1, 3, 3), padding=(0, 1, 1), stride=(1, 2, 1)
    ),
    dict(
        id="2d-strided-dilated", input=(1, 4, 9, 17), weight=(4, 2, 2, 3), stride=(1, 3), dilation=2, groups=2
    ),
]


@pytest.mark.parametrize("views", [False, True], ids=["fields", "views"])
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("case", GEOMETRIES, ids=[case["id"] for case in GEOMETRIES])
def test_any_memory_budget_gives_the_same_forward_and_gradients(
    case, budget, views, no_budget_floor, monkeypatch
):
    if views:
        take_views_everywhere(monkeypatch)
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


def _slab_copies(monkeypatch) -> list:
    """Count the chunks the engine runs: each chunk's slab of the input is copied once, or (the
    standard product on a channels-first input) its columns are."""
    calls = count_calls(monkeypatch, fields_module, "chunk_slab")
    return count_calls(monkeypatch, contraction_module, "write_column_products", calls)


def test_a_tiny_budget_is_floored():
    x, w = torch.randn(4, 8, 32, 32), torch.randn(8, 8, 3, 3)
    assert 2**10 <= chunks_module.MINIMUM_MEMORY_BUDGET <= chunks_module.DEFAULT_MEMORY_BUDGET
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = _slab_copies(monkeypatch)
        tiny = anyconv.conv(x, w, padding=1, memory_budget=1)
    with pytest.MonkeyPatch.context() as monkeypatch:
        floored = _slab_copies(monkeypatch)
        expected = anyconv.conv(x, w, padding=1, memory_budget=chunks_module.MINIMUM_MEMORY_BUDGET)
    assert len(calls) == len(floored) < 4 * 32
    torch.testing.assert_close(tiny, expected)


def test_a_one_row_signal_is_split_along_time(monkeypatch):
    # (B, C, 1, T), the layout of audio: one sample's fields are 4.6 MiB, over a 1 MiB budget
    x, w = torch.randn(1, 8, 1, 2**14), torch.randn(8, 8, 1, 9)
    calls = _slab_copies(monkeypatch)
    anyconv.conv(x, w, padding=(0, 4), memory_budget=2**20)
    assert len(calls) >= 4
