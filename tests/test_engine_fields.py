# ruff: noqa: E501  (one case per line: the table reads as a table)
"""The fields path of the standard convolution: slabs in the input's layout, products into the output.

Against torch's convolutions (tests/torch_reference.py) on every layout the path meets: channels
first and last, chunks of whole samples and of parts of one, both orientations of the product,
oneDNN's inner product and torch.mm; and the layout kept: a channels-last input is never copied
channels first.
"""

import importlib

import pytest
import torch
from convolution_spies import FunctionalConvolutions, NativeConvolutions
from torch_reference import torch_conv

import anyconv
from anyconv.engine.chunks import plan_chunks
from anyconv.engine.fields import chunk_slab
from anyconv.geometry import make_geometry

FIELDS = importlib.import_module("anyconv.engine.fields")
CONTRACTION = importlib.import_module("anyconv.engine.contraction")
PRODUCTS = importlib.import_module("anyconv.engine.field_products")
MATRIX_PRODUCTS = importlib.import_module("anyconv.variants.matrix_products")

CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


#: the tap loops' filter blocks would take the dense cases (see conftest.fields_for_dense), and
#: the columns the standard product on channels-first inputs (tests/test_engine_fields_columns.py):
#: here the rows' form, which every other variant and channels-last input takes
pytestmark = pytest.mark.usefixtures("fields_for_dense", "rows_form")


@pytest.fixture
def rows_form(monkeypatch):
    """The fields path's rows (G, M, Kg) for the standard product too: the columns turned off."""
    monkeypatch.setattr(CONTRACTION, "columns_fit", lambda *arguments: False)


# input shape, weight shape, conv arguments, memory budget (None: the default); every case has
# more than MAX_CHANNELS_PER_GROUP channels per group, so that the fields path takes it
CASES = [
    {"id": "3x3-pad", "input": (2, 16, 12, 11), "weight": (12, 16, 3, 3), "with": {"padding": 1}},
    {"id": "3x3-many-positions", "input": (2, 16, 30, 28), "weight": (12, 16, 3, 3), "with": {"padding": 1}},
    {
        "id": "3x3-split-sample",
        "input": (2, 16, 30, 28),
        "weight": (12, 16, 3, 3),
        "with": {"padding": 1},
        "budget": 2**16,
    },
    {
        "id": "3x3-split-sample-many-positions",
        "input": (1, 16, 64, 60),
        "weight": (12, 16, 3, 3),
        "with": {"padding": 1},
        "budget": 2**19,
    },
    {
        "id": "stride2-pad",
        "input": (3, 16, 13, 12),
        "weight": (8, 16, 3, 3),
        "with": {"padding": 1, "stride": 2},
    },
    {
        "id": "dilated",
        "input": (1, 16, 14, 14),
        "weight": (16, 16, 3, 3),
        "with": {"padding": 2, "dilation": 2},
    },
    {"id": "valid-no-padding", "input": (2, 16, 9, 10), "weight": (6, 16, 3, 2), "with": {}},
    {
        "id": "asymmetric-padding",
        "input": (2, 16, 9, 10),
        "weight": (6, 16, 3, 3),
        "with": {"padding": ((1, 0), (0, 2))},
    },
    {
        "id": "groups-2",
        "input": (2, 32, 10, 10),
        "weight": (8, 16, 3, 3),
        "with": {"padding": 1, "groups": 2},
    },
    {"id": "stem-7x7", "input": (1, 3, 40, 40), "weight": (8, 3, 7, 7), "with": {"padding": 3, "stride": 2}},
    {"id": "1d-many-positions", "input": (2, 12, 700), "weight": (10, 12, 5), "with": {"padding": 2}},
    {
        "id": "1d-split",
        "input": (1, 12, 2048),
        "weight": (10, 12, 5),
        "with": {"padding": 2},
        "budget": 2**16,
    },
    {"id": "3d", "input": (1, 12, 6, 9, 8), "weight": (10, 12, 3, 3, 3), "with": {"padding": 1}},
    {
        "id": "3d-split",
        "input": (1, 12, 6, 20, 30),
        "weight": (10, 12, 3, 3, 3),
        "with": {"padding": 1},
        "budget": 2**16,
    },
]


def _tensors(case, dtype, channels_last=False, bias=True):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(case["input"], dtype=dtype, generator=generator)
    w = torch.randn(case["weight"], dtype=dtype, generator=generator)
    b = torch.randn(case["weight"][0], dtype=dtype, generator=generator) if bias else None
    if channels_last:
        # channels innermost, for any N (torch's memory formats name the 4-D and 5-D ones)
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    return x, w, b


def _conv(case, x, w, b):
    return anyconv.conv(x, w, b, **case["with"], memory_budget=case.get("budget"))


def _counting(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case["id"])
def test_fields_path_equals_torch(case, dtype, bias, no_budget_floor, monkeypatch):
    x, w, b = _tensors(case, dtype, bias=bias)
    products = _counting(monkeypatch, CONTRACTION, "write_products")
    with torch.no_grad():
        mine = _conv(case, x, w, b)
    assert products, "the fields path did not take the product of the standard convolution"
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(mine, torch_conv(x, w, b, **case["with"]), **tolerance)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case["id"])
def test_channels_last_input_gives_torch_values_and_layout(case, no_budget_floor, monkeypatch):
    x, w, b = _tensors(case, torch.float32, channels_last=True)
    expected = torch_conv(x, w, b, **case["with"])

    def refused(*args, **kwargs):
        raise AssertionError("a channels-last input was copied channels first")

    monkeypatch.setattr(FIELDS, "chunk_image", refused)
    with torch.no_grad():
        mine = _conv(case, x, w, b)
    torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-4)
    if x.dim() in CHANNELS_LAST:
        # torch's rule: channels-last in, channels-last out
        assert mine.is_contiguous(memory_format=CHANNELS_LAST[x.dim()])


@pytest.mark.parametrize("layout", ["channels-last", "channels-first"])
def test_a_slab_without_padding_is_a_view_of_a_channels_last_input_only(layout):
    x = torch.randn(2, 6, 9, 8)
    if layout == "channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    geometry = make_geometry(x.shape[2:], 3)
    chunk = plan_chunks(geometry, 2, 4 * 6 * 9, 2**30)[0]
    slab = chunk_slab(x, geometry, chunk)
    assert slab.shape == (2, 9, 8, 6)
    assert (slab.data_ptr() == x.data_ptr()) == (layout == "channels-last")
    torch.testing.assert_close(slab, x.movedim(1, -1))


def test_a_channels_first_input_with_aliasing_channel_stride_is_padded_channels_first(monkeypatch):
    # 32 x 32 float planes: the channels lie 4 KiB apart
    x, w = torch.randn(2, 16, 32, 32), torch.randn(8, 16, 3, 3)
    images = _counting(monkeypatch, FIELDS, "chunk_image")
    mine = anyconv.conv(x, w, padding=1)
    assert images
    torch.testing.assert_close(mine, torch_conv(x, w, padding=1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "case, channels_last",
    [(CASES[1], False), (CASES[0], False), (CASES[1], True), (CASES[3], False)],
    ids=["whole-samples", "small-samples", "channels-last", "chunks-of-part-of-a-sample"],
)
def test_the_product_takes_the_fields_as_rows(case, channels_last, monkeypatch):
    # oneDNN's weights are the filters, never the fields (whose product ran slower, docs/benchmarks.md)
    monkeypatch.setattr(MATRIX_PRODUCTS, "MIN_WORK", 1)
    x, w, b = _tensors(case, torch.float32, channels_last=channels_last)
    rows = []
    original = PRODUCTS.row_product

    def recording(left, right, bias):
        rows.append((left.shape, right.shape))
        return original(left, right, bias)

    monkeypatch.setattr(PRODUCTS, "row_product", recording)
    with torch.no_grad():
        mine = _conv(case, x, w, b)
    groups = case["with"].get("groups", 1)
    assert rows and all(right == (w.shape[0] // groups, w[0].numel()) for _, right in rows)
    torch.testing.assert_close(mine, torch_conv(x, w, b, **case["with"]), rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("case", [CASES[1], CASES[0]], ids=["per-sample", "whole-chunk"])
def test_torch_mm_serves_when_onednn_is_off(case, monkeypatch):
    # products of every size through oneDNN while it is on
    monkeypatch.setattr(MATRIX_PRODUCTS, "MIN_WORK", 1)
    x, w, b = _tensors(case, torch.float32)
    products = _counting(monkeypatch, torch.ops.mkldnn, "_linear_pointwise")
    with torch.no_grad():
        with_onednn = _conv(case, x, w, b)
        used = len(products)
        with torch.backends.mkldnn.flags(enabled=False):
            without = _conv(case, x, w, b)
    assert len(products) == used
    if torch.backends.mkldnn.is_available():
        assert used > 0
    torch.testing.assert_close(with_onednn, without, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True], ids=["channels-first", "channels-last"])
def test_no_convolution_of_torch_is_called(channels_last):
    x, w, b = _tensors(CASES[1], torch.float32, channels_last=channels_last)
    x.requires_grad_()
    with FunctionalConvolutions() as functional, NativeConvolutions() as native:
        anyconv.conv(x, w, b, padding=1).sum().backward()
    assert functional.seen == [] and native.seen == []


#: one-tap fields, copied straight out of the input: (input shape, stride, groups, budget)
ONE_TAP = [
    pytest.param((2, 8, 9, 7), 2, 2, 2**30, id="strided-groups"),
    pytest.param((1, 6, 40, 33), 3, 1, 2**10, id="rows-of-one-sample"),
    pytest.param((2, 4, 5, 6, 7), (1, 2, 3), 2, 2**30, id="3d"),
    pytest.param((3, 5, 11), 1, 1, 2**8, id="1d-split"),
]


@pytest.mark.parametrize(("shape", "stride", "groups", "budget"), ONE_TAP)
@pytest.mark.parametrize("layout", ["channels-first", "channels-last"])
def test_one_tap_fields_equal_the_slab_route(shape, stride, groups, budget, layout):
    from anyconv.functional.im2col import field_view

    x = torch.randn(shape, dtype=torch.float64)
    if layout == "channels-last" and x.dim() in CHANNELS_LAST:
        x = x.contiguous(memory_format=CHANNELS_LAST[x.dim()])
    geometry = make_geometry(x.shape[2:], 1, stride=stride)
    chunks = plan_chunks(geometry, x.shape[0], 8 * x.shape[1], budget)
    for chunk in chunks:
        fields = FIELDS.chunk_fields(x, geometry, chunk, groups)
        # the general route: the chunk's slab, its (here one-tap) fields, then (G, M, Kg)
        slab = chunk_slab(x, geometry, chunk).movedim(-1, 1)
        view = field_view(slab, chunk.geometry).unflatten(1, (groups, -1))
        ndim = geometry.ndim
        expected = view.permute(1, 0, *range(3, 3 + 2 * ndim), 2).reshape(groups, chunk.num_fields, -1)
        assert torch.equal(fields, expected)
    assert len(chunks) > 1 or budget == 2**30


@pytest.mark.parametrize(("shape", "stride", "groups", "budget"), ONE_TAP)
def test_one_tap_field_gradients_fold_back_as_the_adjoint_of_the_copy(shape, stride, groups, budget):
    # <fields(x), g> = <x, fold(g)> for every chunk: add_field_grads is chunk_fields' adjoint
    x = torch.randn(shape, dtype=torch.float64)
    geometry = make_geometry(x.shape[2:], 1, stride=stride)
    for chunk in plan_chunks(geometry, x.shape[0], 8 * x.shape[1], budget):
        fields = FIELDS.chunk_fields(x, geometry, chunk, groups)
        grad_fields = torch.randn_like(fields)
        folded = torch.zeros_like(x)
        FIELDS.add_field_grads(folded, grad_fields, geometry, chunk)
        torch.testing.assert_close((fields * grad_fields).sum(), (x * folded).sum())
        # only the positions the chunk reads get a gradient
        untouched = torch.ones_like(x, dtype=torch.bool)
        kept = [slice(part.start, part.stop, step) for part, step in zip(chunk.slab, geometry.stride)]
        untouched[(chunk.samples, slice(None), *kept)] = False
        assert torch.all(folded[untouched] == 0)
